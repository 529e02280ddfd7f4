"""NST, neuron selectivity transfer (Huang & Wang 2017; METHODS.md 9; mdistiller distillers/NST.py).

total = ce_weight * CE + feat_weight * sum_i nst(s_i, t_i)
over the stage maps after their ReLU (mdistiller's `feats[1:]`), paired by index as
mdistiller's `zip` (a model's extra last stages unused); a plain sum over stages.
mdistiller's cfg.py: CE 1, FEAT 50; no warm-up.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.at import paired_stages
from kd_jax.methods.base import Method, cross_entropy, non_negative


@dataclasses.dataclass(frozen=True)
class NST(Method):
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(50.0)

  def loss(self, student, teacher, labels, epoch, aux):
    selectivity = sum(losses.nst(s, t) for s, t in paired_stages(student, teacher))
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "nst": self.feat_weight * selectivity}
    return sum(terms.values()), terms

  def formula(self):
    return f"{self.ce_weight:g} CE + {self.feat_weight:g} sum over stages[1:] NST"
