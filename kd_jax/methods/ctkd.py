"""CTKD, curriculum temperature for KD (Li et al. AAAI 2023; zhengli97/CTKD; METHODS.md 10).

total = ce_weight * CE + kd_weight * KD(T) + dkd_weight * DKD(alpha, beta, T), as the
authors' `loss = gamma * CE + alpha * KL + beta * loss_kd` (flags -r, -a, -b), where T is
learnt (kd_jax.methods.ctkd_temperature): T = t_start + t_end * sigmoid(r), r from a
global parameter or a per-sample MLP, its gradient reversed and scaled by the cosine
curriculum lambda(e) (e counted from 1, as their epoch loop). The module is the method's
extras: trained by the same SGD as the student (same lr schedule, momentum and weight
decay, as their single optimizer over `trainable_list`), saved in checkpoints, never in the
final student. Their scripts: KD base `-r 0.1 -a 0.9 -b 0`, DKD base `-r 1 -a 0 -b 1
--dkd_alpha 1 --dkd_beta 2` (resnet56 -> resnet20), without DKD's warm-up (their
`train_distill` has none). `standardize` z-scores both sides' logits before the KD term
only, as the logit-standardization repository's CTKD/ copy (helper/loops.py: its
`criterion_div`, DistillKL_logit_stand, standardizes; `DKDloss` gets the raw logits); the
DKD term and the temperature module see the raw logits. Metrics: ctkd_t_mean / ctkd_t_std (over the batch) and ctkd_lambda.
"""
import dataclasses

import jax.numpy as jnp

from kd_jax import losses
from kd_jax.errors import UserError
from kd_jax.methods.base import (Method, cross_entropy, distillation_logits, non_negative,
                                 one_of, positive, standardized)
from kd_jax.methods.ctkd_temperature import (GlobalTemperature, InstanceTemperature, bounded,
                                             curriculum_lambda)


@dataclasses.dataclass(frozen=True)
class CTKD(Method):
  ce_weight: float = non_negative(0.1)
  kd_weight: float = non_negative(0.9)
  dkd_weight: float = non_negative(0.0)
  alpha: float = non_negative(1.0)  # DKD's TCKD weight (--dkd_alpha)
  beta: float = non_negative(8.0)  # DKD's NCKD weight (--dkd_beta)
  temperature_module: str = one_of("global", ("global", "instance"))
  t_start: float = positive(1.0)  # the lowest temperature (--t_start)
  t_end: float = positive(20.0)  # the range above it (--t_end)
  lambda_start: float = non_negative(0.0)  # -(--decay_max)
  lambda_end: float = non_negative(1.0)  # -(--decay_min)
  curriculum_epochs: int = positive(10)  # --decay_loops
  instance_hidden: int = positive(256)
  instance_topk: int = positive(100)
  standardize: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.temperature_module == "instance" and self.dkd_weight:
      raise UserError("config.method.temperature_module='instance' takes the KD term only "
                      "(as the authors' instance-wise loss); set config.method.dkd_weight=0")

  def extras(self, setup):
    if self.temperature_module == "global":
      return GlobalTemperature()
    return InstanceTemperature(setup.feeder.info.num_classes, self.instance_hidden,
                               self.instance_topk, rngs=setup.rngs)

  def curriculum(self, epoch):
    """lambda at the 0-based `epoch` (the curriculum counts epochs from 1)."""
    return curriculum_lambda(epoch + 1, self.lambda_start, self.lambda_end,
                             self.curriculum_epochs)

  def loss(self, student, teacher, labels, epoch, aux):
    lam = self.curriculum(epoch)
    raw = aux.extras(teacher.logits, student.logits, -lam)
    temperature = bounded(raw, self.t_start, self.t_end)
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels)}
    if self.kd_weight:
      kd = losses.kd if self.temperature_module == "global" else losses.kd_instance_temperature
      terms["kd"] = self.kd_weight * kd(*distillation_logits(student, teacher, self.standardize),
                                        temperature)
    if self.dkd_weight:
      terms["dkd"] = self.dkd_weight * losses.dkd(student.logits, teacher.logits, labels,
                                                  self.alpha, self.beta, temperature)
    diagnostics = {"ctkd_t_mean": jnp.mean(temperature), "ctkd_t_std": jnp.std(temperature),
                   "ctkd_lambda": lam}
    return sum(terms.values()), terms | diagnostics

  def describe_extras(self, student_dim, teacher_dim):
    del student_dim, teacher_dim
    if self.temperature_module == "global":
      module = "one learnable parameter r (init 1)"
    else:
      module = (f"MLP on the teacher's top-{self.instance_topk} probabilities and the "
                f"student's at those classes: Linear -> BatchNorm -> ReLU -> Linear("
                f"{self.instance_hidden}, 1), last layer zero-init, one T per sample")
    return {"temperature": (
        f"{module}; T = {self.t_start:g} + {self.t_end:g} sigmoid(r); its gradient reversed "
        f"and scaled by lambda(e) = {self.lambda_start:g} -> {self.lambda_end:g} along a "
        f"half cosine over epochs 1..{self.curriculum_epochs}; trained by the student's SGD; "
        "not saved with the student")}

  def formula(self):
    terms = [f"{self.ce_weight:g} CE"]
    if self.kd_weight:
      terms.append(f"{self.kd_weight:g} KD(T)")
    if self.dkd_weight:
      terms.append(f"{self.dkd_weight:g} DKD(alpha={self.alpha:g}, beta={self.beta:g}, T)")
    where = "T learnt per sample" if self.temperature_module == "instance" else "T learnt"
    return (" + ".join(terms) + f", {where} in ({self.t_start:g}, {self.t_start + self.t_end:g})"
            " through gradient reversal (CTKD)" + self._standardized())

  def _standardized(self):
    """The card's LS note: the KD term alone is standardized (the LS CTKD/ copy)."""
    if not self.standardize or not self.dkd_weight:
      return standardized(self.standardize)
    kd = "KD term on both sides' logits z-scored per sample (LS), " if self.kd_weight else ""
    return f", {kd}DKD term on raw logits (as the LS repository's CTKD/ copy)"
