"""DeiT's hard distillation and DeiT++ (ND on the distillation path), METHODS.md 11.

A distilled DeiT student has two heads (kd_jax.models.vit: features['cls_logits'] on the
class token, features['dist_logits'] on the distillation token; its logits, what it is
evaluated on, are their mean).

DeiT   = ce_weight CE(cls head, targets) + w(e) kd_weight CE(dist head, argmax teacher)
DeiT++ = DeiT + nd_weight ND(head(mean of the class and distillation tokens), centres)

with w(e) = min(1, e / warmup_epochs) (e the 0-based epoch; no warm-up when 0). The
targets are the batch's labels, or their mixup/cutmix + label-smoothing distributions when
config.augment mixes the batch (kd_jax.data.mixing); the teacher sees the same mixed
images. DeiT (Touvron et al. 2021, `DistillationLoss` 'hard'): 0.5 / 0.5, no warm-up.
DeiT++ as the ND authors' ImageNet/DeiT/train_launch_distilled.py: CE 1, hard KD 0.5
warmed up over 5 epochs, ND 1.5, the student's 768-d embedding through EmbTrans's
BatchNorm1d -> Dropout(0.5) -> Linear(768, 3024) head to the RegNetY-16GF teacher's
width, and ND's class centres mixed as the images are (their `mixup_center`).
"""
import dataclasses

import jax
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.data import mixing
from kd_jax.errors import UserError
from kd_jax.methods.base import Method, linear_warmup, non_negative
from kd_jax.methods.nd import _WithND, nd_norms, student_embedding


def target_distributions(labels, num_classes):
  """[B, C] targets: the mixed, smoothed ones of a mixed batch, else one-hot."""
  if isinstance(labels, mixing.Mixed):
    return labels.targets(num_classes)
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _heads(student):
  features = student.features
  if "dist_logits" not in features:
    raise UserError("DeiT distillation needs a student with a distillation token "
                    "(a *_distilled_* DeiT model)")
  return features["cls_logits"], features["dist_logits"]


@dataclasses.dataclass(frozen=True)
class DeiT(Method):
  """DeiT's hard-label distillation through the distillation token."""
  accepts_mixed_labels = True
  needs_distillation_token = True
  ce_weight: float = non_negative(0.5)
  kd_weight: float = non_negative(0.5)
  warmup_epochs: int = non_negative(0)

  def kd_scale(self, epoch):
    if not self.warmup_epochs:
      return self.kd_weight
    return linear_warmup(epoch, self.warmup_epochs) * self.kd_weight

  def loss(self, student, teacher, labels, epoch, aux):
    cls_logits, dist_logits = _heads(student)
    targets = target_distributions(labels, cls_logits.shape[-1])
    terms = {
        "ce": self.ce_weight * losses.soft_target_cross_entropy(cls_logits, targets),
        "kd": self.kd_scale(epoch) * losses.hard_distillation(dist_logits, teacher.logits),
    }
    return sum(terms.values()), terms

  def formula(self, extra=""):
    warmup = f"min(1, e/{self.warmup_epochs}) " if self.warmup_epochs else ""
    return (f"{self.ce_weight:g} CE(class head) + {warmup}{self.kd_weight:g} "
            f"CE(distillation head, teacher argmax){extra}")


@dataclasses.dataclass(frozen=True)
class DeiTND(DeiT, _WithND):
  """DeiT++: DeiT plus ND on the mean of the class and distillation tokens."""
  ce_weight: float = non_negative(1.0)
  kd_weight: float = non_negative(0.5)
  warmup_epochs: int = non_negative(5)
  nd_weight: float = non_negative(1.5)

  def loss(self, student, teacher, labels, epoch, aux):
    total, terms = DeiT.loss(self, student, teacher, labels, epoch, aux)
    student_features = student_embedding(student, aux)
    class_means = aux.frozen["class_means"]
    if isinstance(labels, mixing.Mixed):
      centers = labels.mix_rows(class_means[labels.labels], class_means.shape[0])
    else:
      centers = class_means[labels]
    nd = self.nd_weight * losses.nd_to_centers(student_features, teacher.features["pooled"],
                                               centers)
    return total + nd, terms | {"nd": nd} | nd_norms(student_features, teacher)

  def formula(self, extra=""):
    return DeiT.formula(self, f" + {self.nd_weight:g} ND (centres mixed as the images){extra}")
