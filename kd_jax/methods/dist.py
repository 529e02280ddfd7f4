"""DIST (Huang et al. NeurIPS 2022): CE + beta * inter + gamma * intra (Pearson), T^2-scaled.

CIFAR-100 defaults beta = gamma = 2, T = 4 as the DIST paper states for CIFAR. With
`warmup_epochs` > 0 the DIST term is scaled by min(1, e/warmup_epochs), e the 0-based epoch
(the ND authors' DIST++, CIFAR/DIST++/train_dist.py; DIST itself has no warm-up).
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, linear_warmup, positive, non_negative


@dataclasses.dataclass(frozen=True)
class DIST(Method):
  ce_weight: float = non_negative(1.0)
  beta: float = non_negative(2.0)
  gamma: float = non_negative(2.0)
  temperature: float = positive(4.0)
  warmup_epochs: int = non_negative(0)

  def warmup(self, epoch):
    """min(1, e / warmup_epochs), epochs from 0; 1 without a warm-up."""
    return linear_warmup(epoch, self.warmup_epochs) if self.warmup_epochs else 1.0

  def loss(self, student, teacher, labels, epoch, aux):
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "dist": self.warmup(epoch) * losses.dist(student.logits, teacher.logits, self.beta, self.gamma,
                            self.temperature),
    }
    return sum(terms.values()), terms

  def formula(self):
    warmup = f"min(1, e/{self.warmup_epochs}) " if self.warmup_epochs else ""
    return (f"{self.ce_weight:g} CE + {warmup}DIST(beta={self.beta:g}, gamma={self.gamma:g}, "
            f"T={self.temperature:g})")
