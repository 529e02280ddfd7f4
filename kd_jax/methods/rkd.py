"""RKD, relational KD (Park et al. 2019; METHODS.md 9; mdistiller distillers/RKD.py).

total = ce_weight * CE + feat_weight * rkd(f_s, f_t, distance_weight, angle_weight)
on the pooled features (mdistiller's `pooled_feat`): Euclidean (not squared) distances
with eps 1e-12 (mdistiller's CFG.RKD.PDIST, fixed inside kd_jax.losses.rkd) plus angles;
batch-level. mdistiller's cfg.py: CE 1, FEAT 1, DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, non_negative


@dataclasses.dataclass(frozen=True)
class RKD(Method):
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(1.0)
  distance_weight: float = non_negative(25.0)
  angle_weight: float = non_negative(50.0)

  def loss(self, student, teacher, labels, epoch, aux):
    relational = losses.rkd(student.features["pooled"], teacher.features["pooled"],
                            self.distance_weight, self.angle_weight)
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "rkd": self.feat_weight * relational}
    return sum(terms.values()), terms

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.feat_weight:g} RKD(pooled; distance "
            f"{self.distance_weight:g}, angle {self.angle_weight:g})")
