"""AT, attention transfer (Zagoruyko & Komodakis 2017; METHODS.md 9; mdistiller distillers/AT.py).

total = ce_weight * CE + feat_weight * sum_i at(s_i, t_i, p)
over the stage maps after their ReLU (mdistiller's `feats`, not `preact_feats`) from the
second on (`feats[1:]`, the stem left out), paired by index as mdistiller's `zip`: when one
model has more stages, its extra last stages are unused. A plain sum over stages, no mean.
mdistiller's cfg.py: CE 1, FEAT 1000, p 2; no warm-up.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, non_negative, positive


def paired_stages(student, teacher, first=1):
  """(student map, teacher map) of stages `first`.. of both, zipped (shorter list wins)."""
  return list(zip(student.features["stages"][first:], teacher.features["stages"][first:]))


@dataclasses.dataclass(frozen=True)
class AT(Method):
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(1000.0)
  p: float = positive(2.0)

  def loss(self, student, teacher, labels, epoch, aux):
    attention = sum(losses.at(s, t, self.p) for s, t in paired_stages(student, teacher))
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "at": self.feat_weight * attention}
    return sum(terms.values()), terms

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.feat_weight:g} sum over stages[1:] "
            f"AT(p={self.p:g})")
