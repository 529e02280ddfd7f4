"""ND, feature norm and direction (METHODS.md 5), combined with KD, DKD and CSKD.

KD++  = CE + min(1, e/warmup) kd_weight KD(T) + nd_weight ND
DKD++ = CE + min(1, e/warmup) DKD(alpha, beta, T) + nd_weight ND
        (with `warmup_nd`, as the authors' ImageNet DKD++: the ND term warmed up too)
CSKD+ND = CE + weight [cskd(T) + cskd(T_i)] + nd_weight ND   (new: unpublished)
with e the 0-based epoch, as the ND authors count. When the student's pooled width
differs from the teacher's, ND sees the student feature through a projection head
BatchNorm1d -> Dropout(0.5) -> Linear(d_s, d_t), trained with the student.
"""
import dataclasses

from flax import nnx
import jax.numpy as jnp

from kd_jax import losses, models
from kd_jax.models import layers
from kd_jax.methods.base import (Method, cross_entropy, linear_warmup, one_of, positive,
                                 non_negative)
from kd_jax.methods.cskd import CSKD


class ProjectionHead(nnx.Module):
  """BatchNorm1d(d_s) -> Dropout(0.5) -> Linear(d_s, d_t): feeds only the ND term.

  The Linear starts as the authors' `init` says (models.CLASSIFIER_INITS): on CIFAR
  PyTorch's default weight with a zero bias, on ImageNet weight and bias N(0, 0.01^2).
  """

  def __init__(self, student_dim, teacher_dim, rngs, init="zero_bias"):
    self.bn = layers.batch_norm(student_dim, dtype=jnp.float32, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.linear = layers.linear(student_dim, teacher_dim, dtype=jnp.float32, rngs=rngs)
    models.reinit_linear(self.linear, init, rngs)

  def __call__(self, features, train):
    features = self.bn(features, use_running_average=not train)
    return self.linear(self.dropout(features, deterministic=not train))


def nd_term(student, teacher, labels, aux, train=True):
  """ND on pooled features (projected when a head exists) + norm diagnostics."""
  student_features = student.features["pooled"].astype(jnp.float32)
  if aux.head is not None:
    student_features = aux.head(student_features, train=train)
  teacher_features = teacher.features["pooled"]
  value = losses.nd(student_features, teacher_features, aux.class_means, labels)
  norms = {"student_norm": jnp.mean(jnp.linalg.norm(student_features, axis=-1)),
           "teacher_norm": jnp.mean(jnp.linalg.norm(teacher_features.astype(jnp.float32), axis=-1))}
  return value, norms


@dataclasses.dataclass(frozen=True)
class _WithND(Method):
  """Shared ND plumbing: class means from the teacher, the projection head."""
  needs_class_means = True
  head_init: str = one_of("zero_bias", models.CLASSIFIER_INITS)

  def make_head(self, student_dim, teacher_dim, rngs):
    if student_dim == teacher_dim:
      return None
    return ProjectionHead(student_dim, teacher_dim, rngs, self.head_init)


@dataclasses.dataclass(frozen=True)
class KDND(_WithND):
  """KD++ (METHODS.md 5)."""
  ce_weight: float = non_negative(1.0)
  kd_weight: float = non_negative(1.0)
  temperature: float = positive(4.0)
  nd_weight: float = non_negative(2.0)
  warmup_epochs: int = positive(20)

  def loss(self, student, teacher, labels, epoch, aux):
    nd, norms = nd_term(student, teacher, labels, aux)
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "kd": linear_warmup(epoch, self.warmup_epochs) * self.kd_weight
              * losses.kd(student.logits, teacher.logits, self.temperature),
        "nd": self.nd_weight * nd,
    }
    return sum(terms.values()), terms | norms

  def formula(self):
    return (f"{self.ce_weight:g} CE + min(1, e/{self.warmup_epochs}) {self.kd_weight:g} "
            f"KD(T={self.temperature:g}) + {self.nd_weight:g} ND")


@dataclasses.dataclass(frozen=True)
class DKDND(_WithND):
  """DKD++ (METHODS.md 5)."""
  ce_weight: float = non_negative(1.0)
  alpha: float = non_negative(1.0)
  beta: float = non_negative(8.0)
  temperature: float = positive(4.0)
  nd_weight: float = non_negative(1.0)
  warmup_epochs: int = positive(20)
  warmup_nd: bool = False

  def loss(self, student, teacher, labels, epoch, aux):
    nd, norms = nd_term(student, teacher, labels, aux)
    warmup = linear_warmup(epoch, self.warmup_epochs)
    terms = {
        "ce": self.ce_weight * cross_entropy(student.logits, labels),
        "dkd": warmup * losses.dkd(student.logits, teacher.logits, labels, self.alpha,
                                   self.beta, self.temperature),
        "nd": (warmup if self.warmup_nd else 1.0) * self.nd_weight * nd,
    }
    return sum(terms.values()), terms | norms

  def formula(self):
    warmup = f"min(1, e/{self.warmup_epochs})"
    return (f"{self.ce_weight:g} CE + {warmup} DKD(alpha={self.alpha:g}, beta={self.beta:g}, "
            f"T={self.temperature:g}) + {warmup + ' ' if self.warmup_nd else ''}"
            f"{self.nd_weight:g} ND")


@dataclasses.dataclass(frozen=True)
class CSKDND(CSKD, _WithND):
  """CSKD (+CSWT) + nd_weight ND: a combination no one has published."""
  nd_weight: float = non_negative(1.0)

  def loss(self, student, teacher, labels, epoch, aux):
    total, metrics = CSKD.loss(self, student, teacher, labels, epoch, aux)
    nd, norms = nd_term(student, teacher, labels, aux)
    return total + self.nd_weight * nd, metrics | {"nd": self.nd_weight * nd} | norms

  def formula(self):
    return CSKD.formula(self, extra=f" + {self.nd_weight:g} ND")
