"""PKT, probabilistic knowledge transfer (Passalis & Tefas 2018; METHODS.md 9;
mdistiller distillers/PKT.py).

total = ce_weight * CE + feat_weight * pkt(f_s, f_t, eps=1e-7)
on the pooled features (mdistiller's `pooled_feat`); batch-level. mdistiller's cfg.py:
CE 1, FEAT 30000.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, non_negative


@dataclasses.dataclass(frozen=True)
class PKT(Method):
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(30000.0)

  def loss(self, student, teacher, labels, epoch, aux):
    transfer = losses.pkt(student.features["pooled"], teacher.features["pooled"])
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "pkt": self.feat_weight * transfer}
    return sum(terms.values()), terms

  def formula(self):
    return f"{self.ce_weight:g} CE + {self.feat_weight:g} PKT(pooled)"
