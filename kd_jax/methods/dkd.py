"""DKD (METHODS.md 3): CE + min(epoch/warmup, 1) * (alpha TCKD + beta NCKD).

Epochs count from 1 as in mdistiller, so the first epoch gets 1/warmup of the weight.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import (Method, cross_entropy, distillation_logits, linear_warmup,
                                 positive, standardized, non_negative)


@dataclasses.dataclass(frozen=True)
class DKD(Method):
  ce_weight: float = non_negative(1.0)
  alpha: float = non_negative(1.0)
  beta: float = non_negative(8.0)
  temperature: float = positive(4.0)
  warmup_epochs: int = positive(20)
  standardize: bool = False

  def warmup(self, epoch):
    """min(1, e / warmup) with epochs counted from 1, as mdistiller counts them."""
    return linear_warmup(epoch + 1, self.warmup_epochs)

  def loss(self, student, teacher, labels, epoch, aux):
    student_logits, teacher_logits = distillation_logits(student, teacher, self.standardize)
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "dkd": self.warmup(epoch) * losses.dkd(student_logits, teacher_logits, labels, self.alpha,
                                   self.beta, self.temperature),
    }
    return sum(terms.values()), terms

  def formula(self):
    return (f"{self.ce_weight:g} CE + min(1, (e+1)/{self.warmup_epochs}) DKD(alpha="
            f"{self.alpha:g}, beta={self.beta:g}, T={self.temperature:g})"
            + standardized(self.standardize))
