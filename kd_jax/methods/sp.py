"""SP, similarity-preserving KD (Tung & Mori 2019; METHODS.md 9; mdistiller distillers/SP.py).

total = ce_weight * CE + feat_weight * sp(s_last, t_last)
on the last stage map after its ReLU (mdistiller's `feats[-1]`), batch-level (B x B), so
under data parallelism it sees the global batch. mdistiller's cfg.py: CE 1, FEAT 3000.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, non_negative


@dataclasses.dataclass(frozen=True)
class SP(Method):
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(3000.0)

  def loss(self, student, teacher, labels, epoch, aux):
    similarity = losses.sp(student.features["stages"][-1], teacher.features["stages"][-1])
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "sp": self.feat_weight * similarity}
    return sum(terms.values()), terms

  def formula(self):
    return f"{self.ce_weight:g} CE + {self.feat_weight:g} SP(last stage)"
