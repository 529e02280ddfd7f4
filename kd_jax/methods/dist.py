"""DIST (Huang et al. NeurIPS 2022): CE + beta * inter + gamma * intra (Pearson), T^2-scaled.

CIFAR-100 defaults beta = gamma = 2, T = 4 as the DIST paper states for CIFAR.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, positive, non_negative


@dataclasses.dataclass(frozen=True)
class DIST(Method):
  ce_weight: float = non_negative(1.0)
  beta: float = non_negative(2.0)
  gamma: float = non_negative(2.0)
  temperature: float = positive(4.0)

  def loss(self, student, teacher, labels, epoch, aux):
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "dist": losses.dist(student.logits, teacher.logits, self.beta, self.gamma,
                            self.temperature),
    }
    return sum(terms.values()), terms

  def formula(self):
    return (f"{self.ce_weight:g} CE + DIST(beta={self.beta:g}, gamma={self.gamma:g}, "
            f"T={self.temperature:g})")
