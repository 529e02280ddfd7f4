"""KDSVD, distillation by singular value decomposition (Lee et al. ECCV 2018; METHODS.md 9).

total = ce_weight CE + feat_weight kdsvd(stages[1:] of student, stages[1:] of teacher, K)

as mdistiller `mdistiller/distillers/KDSVD.py` (K = 1, both weights 1): the top-K right
singular vectors of each stage (mdistiller's NCHW view(B, C*H, W)), the student's K+3
aligned to the teacher's, compared between consecutive stages through an RBF kernel
(kd_jax.losses.kdsvd, whose docstring lists the three places kd_jax differs: teacher
vector orientation, pooling of unequal map sizes, finite gradients at repeated singular
values). No trainable extras.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, non_negative, positive


@dataclasses.dataclass(frozen=True)
class KDSVD(Method):
  """CE + feat_weight * KDSVD over feats[1:]."""
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(1.0)
  k: int = positive(1)

  def loss(self, student, teacher, labels, epoch, aux):
    ce = cross_entropy(student.logits, labels)
    svd = self.feat_weight * losses.kdsvd(student.features["stages"][1:],
                                          teacher.features["stages"][1:], self.k)
    return self.ce_weight * ce + svd, {"ce": self.ce_weight * ce, "kdsvd": svd}

  def formula(self):
    return f"{self.ce_weight:g} CE + {self.feat_weight:g} KDSVD(K={self.k}, feats[1:])"
