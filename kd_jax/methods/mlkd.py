"""MLKD (Jin et al. CVPR 2023) as its public code computes it, optionally with LS.

Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/distillers/KD_ours.py` (`KD_ours`;
the logit standardization repository's `MLKD` is the same loss with `--logit-stand`).
With T in (T_cfg, 3, 5, 2, 6) (the config's temperature, then four fixed ones), w the KD
weight and m / c the teacher's weak-view confidence masks (multi_view.median_masks):

  ce        = ce_weight [CE(weak) + CE(strong)]
  kd_weak   = m w sum_T KD_weak(T)
  kd_strong = w [KD_strong(T_cfg) + KD_strong(3) + KD_strong(5) + KD_weak(2) + KD_weak(6)]
  cc_weak   = c w sum_T CC_weak(T)        (losses.class_consistency)
  bc_weak   = m w sum_T BC_weak(T)        (losses.batch_consistency)

Where the code and the paper differ, this follows the code:
  * the 'strong' KD sum takes its T = 2 and T = 6 terms on the weak view, unmasked (the
    code passes the weak logits there), so those two weak-view terms count twice;
  * the strong-view class and batch terms the code computes (`loss_cc_strong`,
    `loss_bc_strong`) are not in its loss dict, so they are not trained on: left out;
  * the class/batch terms use the squared Frobenius distance of the Gram matrices over the
    number of rows, without a T^2 factor.
The recipe's weights are mdistiller's KD defaults (CE 0.1, KD 0.9, T 4), which the MLKD
configs do not override. With `standardize` (LS, `--logit-stand`), both sides' logits are
z-scored per sample in the KD terms only; the masks, CC and BC stay on raw logits, and the
LS command line sets T_cfg = base_temp and w = kd_weight (for CC and BC too).
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import distillation_logits, non_negative, positive
from kd_jax.methods.multi_view import MultiViewMethod, both_views_cross_entropy, median_masks

FIXED_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # after the config's T, as KD_ours lists them
STRONG_VIEW_TERMS = 3  # the first three temperatures of kd_strong use the strong view


@dataclasses.dataclass(frozen=True)
class MLKD(MultiViewMethod):
  ce_weight: float = non_negative(0.1)
  kd_weight: float = non_negative(0.9)
  temperature: float = positive(4.0)
  standardize: bool = False

  def temperatures(self):
    return (self.temperature,) + FIXED_TEMPERATURES

  def loss(self, student, teacher, labels, epoch, aux):
    (student_weak, student_strong), (teacher_weak, teacher_strong) = student, teacher
    sample_fraction, class_fraction = median_masks(teacher_weak.logits)
    # (student, teacher) logits per term: the KD terms' possibly standardized, CC/BC raw.
    kd_weak = distillation_logits(student_weak, teacher_weak, self.standardize)
    kd_strong = distillation_logits(student_strong, teacher_strong, self.standardize)
    raw_weak = (student_weak.logits, teacher_weak.logits)
    temperatures = self.temperatures()
    # The code's 'strong' KD sum: strong view for the first three T, weak view after.
    strong_sum_views = [kd_strong] * STRONG_VIEW_TERMS + [kd_weak] * (
        len(temperatures) - STRONG_VIEW_TERMS)

    def over_temperatures(loss_fn, views):
      return sum(loss_fn(s, t, temperature) for (s, t), temperature in zip(views, temperatures))

    every_t = lambda pair: [pair] * len(temperatures)
    w = self.kd_weight
    terms = {
        "ce": self.ce_weight * both_views_cross_entropy(student, labels),
        "kd_weak": sample_fraction * w * over_temperatures(losses.kd, every_t(kd_weak)),
        "kd_strong": w * over_temperatures(losses.kd, strong_sum_views),
        "cc_weak": class_fraction * w * over_temperatures(losses.class_consistency,
                                                          every_t(raw_weak)),
        "bc_weak": sample_fraction * w * over_temperatures(losses.batch_consistency,
                                                           every_t(raw_weak)),
    }
    diagnostics = {"sample_mask": sample_fraction, "class_mask": class_fraction}
    return sum(terms.values()), terms | diagnostics

  def formula(self):
    t = [f"{value:g}" for value in self.temperatures()]
    strong = " + ".join([f"KD_strong({v})" for v in t[:STRONG_VIEW_TERMS]]
                        + [f"KD_weak({v})" for v in t[STRONG_VIEW_TERMS:]])
    ls = ", KD terms on both sides' logits z-scored per sample (LS)" if self.standardize else ""
    return (f"{self.ce_weight:g} [CE(weak) + CE(strong)] + {self.kd_weight:g} sum_T "
            f"[m KD_weak(T) + c CC_weak(T) + m BC_weak(T)] + {self.kd_weight:g} [{strong}], "
            f"T in ({', '.join(t)}), m / c = sample / class confidence masks of the "
            f"teacher's weak view{ls}")
