"""CSKD single view (METHODS.md 4.3): CE + weight * [cskd(T) + cskd(T_i)].

With `cswt` off the second term is dropped (CSKD alone). T_i are the CSWT per-sample
temperatures, computed without gradient from this batch's predictions at T = 1.
"""
import dataclasses

import jax.numpy as jnp

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, check_cswt_range, positive, non_negative


@dataclasses.dataclass(frozen=True)
class CSKD(Method):
  ce_weight: float = non_negative(1.0)
  weight: float = non_negative(2.0)
  temperature: float = positive(4.0)
  cswt: bool = True
  t_low: float = positive(2.0)
  t_high: float = positive(6.0)

  def __post_init__(self):
    super().__post_init__()
    check_cswt_range(self)

  def loss(self, student, teacher, labels, epoch, aux):
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "cskd": self.weight * losses.cskd(student.logits, teacher.logits, self.temperature),
    }
    diagnostics = {}
    if self.cswt:
      temperatures = losses.cswt_temperatures(student.logits, teacher.logits, self.t_low,
                                              self.t_high)
      terms["cskd_cswt"] = self.weight * losses.cskd(student.logits, teacher.logits,
                                                     temperatures)
      diagnostics = {"cswt_t_mean": jnp.mean(temperatures), "cswt_t_std": jnp.std(temperatures)}
    return sum(terms.values()), terms | diagnostics

  def formula(self, extra=""):
    """`extra`: further terms (CSKD+ND) placed before the note on T_i."""
    cswt = " + CSKD(T_i)]" if self.cswt else "]"
    note = f", T_i = CSWT in [{self.t_low:g}, {self.t_high:g}]" if self.cswt else ""
    return (f"{self.ce_weight:g} CE + {self.weight:g} [CSKD(T={self.temperature:g}){cswt}"
            f"{extra}{note}")
