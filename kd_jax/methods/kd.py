"""KD (METHODS.md 2), optionally on standardized logits (Sun et al. CVPR 2024).

total = ce_weight * CE + kd_weight * KD(T); with `standardize`, both sides' logits are
z-scored per sample before the KD term (the CE term keeps the raw student logits).
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import (Method, cross_entropy, distillation_logits, positive,
                                 standardized, non_negative)


@dataclasses.dataclass(frozen=True)
class KD(Method):
  ce_weight: float = non_negative(0.1)
  kd_weight: float = non_negative(0.9)
  temperature: float = positive(4.0)
  standardize: bool = False

  def kd_scale(self, epoch):
    """The KD term's weight at `epoch` (KD++ warms it up)."""
    del epoch
    return self.kd_weight

  def loss(self, student, teacher, labels, epoch, aux):
    student_logits, teacher_logits = distillation_logits(student, teacher, self.standardize)
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "kd": self.kd_scale(epoch) * losses.kd(student_logits, teacher_logits, self.temperature),
    }
    return sum(terms.values()), terms

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.kd_weight:g} KD(T={self.temperature:g})"
            + standardized(self.standardize))
