"""Multi-view CSKD as in the public code (METHODS.md 4.3), on the MLKD weak/strong views.

  CE(weak) + CE(strong)
  + m * w [cskd_w(T) + cskd_w(T_i)] + w [cskd_s(T) + cskd_s(T_i)]
  + c * cc_weight [cc_w(T) + cc_w(T_i)] + m * bc_weight [bc_w(T) + bc_w(T_i)]

T_i (CSWT) come from the weak view and are reused for the strong one. From the teacher's
weak-view probabilities at T = 1: m = fraction of samples whose max probability is <=
the batch median, c = fraction of classes whose summed probability is <= the class
median (linear-interpolation percentiles, as numpy's default).

Views and masks are MLKD's (kd_jax/methods/multi_view.py, shared with MLKD).
"""
import dataclasses

import jax.numpy as jnp

from kd_jax import losses
from kd_jax.methods.base import check_cswt_range, positive, non_negative
from kd_jax.methods.multi_view import MultiViewMethod, both_views_cross_entropy, median_masks


@dataclasses.dataclass(frozen=True)
class CSKDMultiView(MultiViewMethod):
  ce_weight: float = non_negative(1.0)
  weight: float = non_negative(2.0)
  cc_weight: float = non_negative(1.0)
  bc_weight: float = non_negative(1.0)
  temperature: float = positive(4.0)
  t_low: float = positive(2.0)
  t_high: float = positive(6.0)

  def __post_init__(self):
    super().__post_init__()
    check_cswt_range(self)

  def loss(self, student, teacher, labels, epoch, aux):
    (student_weak, student_strong), (teacher_weak, teacher_strong) = student, teacher
    temperatures = losses.cswt_temperatures(student_weak.logits, teacher_weak.logits,
                                            self.t_low, self.t_high)
    sample_fraction, class_fraction = median_masks(teacher_weak.logits)

    def both(loss_fn, s, t):  # the fixed and the CSWT temperature
      return loss_fn(s.logits, t.logits, self.temperature) + loss_fn(s.logits, t.logits,
                                                                     temperatures)

    terms = {
        "ce": self.ce_weight * both_views_cross_entropy(student, labels),
        "cskd_weak": sample_fraction * self.weight * both(losses.cskd, student_weak, teacher_weak),
        "cskd_strong": self.weight * both(losses.cskd, student_strong, teacher_strong),
        "cc_weak": class_fraction * self.cc_weight * both(
            losses.class_correlation_distance, student_weak, teacher_weak),
        "bc_weak": sample_fraction * self.bc_weight * both(
            losses.batch_correlation_distance, student_weak, teacher_weak),
    }
    diagnostics = {"cswt_t_mean": jnp.mean(temperatures), "cswt_t_std": jnp.std(temperatures),
                   "sample_mask": sample_fraction, "class_mask": class_fraction}
    return sum(terms.values()), terms | diagnostics

  def formula(self):
    both = f"(T={self.temperature:g}) + {{0}}(T_i)]"
    return (f"{self.ce_weight:g} [CE(weak) + CE(strong)] + m {self.weight:g} [CSKD_weak"
            + both.format("CSKD_weak") + f" + {self.weight:g} [CSKD_strong"
            + both.format("CSKD_strong") + f" + c {self.cc_weight:g} [CC_weak"
            + both.format("CC_weak") + f" + m {self.bc_weight:g} [BC_weak" + both.format("BC_weak")
            + f", T_i = CSWT in [{self.t_low:g}, {self.t_high:g}] from the weak view, "
            "m / c = sample / class confidence masks of the teacher's weak view")
