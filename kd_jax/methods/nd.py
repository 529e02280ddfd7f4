"""ND, feature norm and direction (METHODS.md 5), combined with KD, DKD and CSKD.

KD++  = CE + min(1, e/warmup) kd_weight KD(T) + nd_weight ND
DKD++ = CE + min(1, e/warmup) DKD(alpha, beta, T) + nd_weight ND
        (with `warmup_nd`, as the authors' ImageNet DKD++: the ND term warmed up too)
CSKD+ND = CE + weight [cskd(T) + cskd(T_i)] + nd_weight ND   (new: unpublished)
with e the 0-based epoch, as the ND authors count. When the student's pooled width
differs from the teacher's, ND sees the student feature through a projection head
BatchNorm1d -> Dropout(0.5) -> Linear(d_s, d_t), trained with the student (the method's
extras). The teacher's class means are its frozen extras: one pass of the frozen teacher
over the training split, cached beside the teacher checkpoint.
"""
import dataclasses

from flax import nnx
import jax.numpy as jnp
import numpy as np

from kd_jax import evaluation, losses, models
from kd_jax.data import augment
from kd_jax.models import layers
from kd_jax.methods.base import Method, linear_warmup, one_of, positive, non_negative
from kd_jax.methods.cskd import CSKD
from kd_jax.methods.dkd import DKD
from kd_jax.methods.kd import KD


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


def teacher_class_means(teacher, feeder):
  """Per-class mean of the teacher's pooled features over the augmented training split.

  Teacher in eval mode, one pass with the training augmentation, every example counted
  once (padding masked out), global over all devices (METHODS.md 5).
  """
  graphdef, state = nnx.split(teacher)
  mean, std = jnp.asarray(feeder.info.mean), jnp.asarray(feeder.info.std)
  num_classes = feeder.info.num_classes

  def sums(state, images, labels, mask):
    _, features = nnx.merge(graphdef, state)(augment.normalize(images, mean, std), train=False)
    targets = jnp.where(mask > 0, labels, -1)  # -1: one-hot of zeros, not counted
    return losses.class_sums(features["pooled"], targets, num_classes)

  class_sums, counts = evaluation.total(evaluation.batch_sums(feeder, sums), state,
                                        feeder.train_pass())
  return np.asarray(jnp.asarray(class_sums) / jnp.maximum(jnp.asarray(counts), 1.0)[:, None])


def nd_term(student, teacher, labels, aux, train=True):
  """ND on pooled features (projected when a head exists) + norm diagnostics."""
  student_features = student_embedding(student, aux, train)
  value = losses.nd(student_features, teacher.features["pooled"], aux.frozen["class_means"],
                    labels)
  return value, nd_norms(student_features, teacher)


def student_embedding(student, aux, train=True):
  """The student's pooled features as ND sees them: through the projection head if any."""
  features = student.features["pooled"].astype(jnp.float32)
  return features if aux.extras is None else aux.extras(features, train=train)


def nd_norms(student_features, teacher):
  """Diagnostics beside the ND term: the mean feature norms it compares."""
  teacher_features = teacher.features["pooled"].astype(jnp.float32)
  return {"student_norm": jnp.mean(jnp.linalg.norm(student_features, axis=-1)),
          "teacher_norm": jnp.mean(jnp.linalg.norm(teacher_features, axis=-1))}


@dataclasses.dataclass(frozen=True)
class _WithND(Method):
  """What every ND combination owns: the projection head and the teacher class means."""
  head_init: str = one_of("zero_bias", models.CLASSIFIER_INITS)

  @staticmethod
  def _widths(setup):
    return tuple(setup.feature_shapes(model)["pooled"].shape[-1]
                 for model in (setup.student, setup.teacher))

  def extras(self, setup):
    student_dim, teacher_dim = self._widths(setup)
    if student_dim == teacher_dim:
      return None
    return ProjectionHead(student_dim, teacher_dim, setup.rngs, self.head_init)

  def frozen(self, setup):
    shape = (setup.feeder.info.num_classes, self._widths(setup)[1])
    means = setup.cached("class_means", shape,
                         lambda: teacher_class_means(setup.teacher, setup.feeder))
    return {"class_means": jnp.asarray(means, jnp.float32)}

  def describe_extras(self, student_dim, teacher_dim):
    if student_dim == teacher_dim:
      return {}
    return {"head": f"BatchNorm1d -> Dropout(0.5) -> Linear({student_dim} -> {teacher_dim}), "
                    f"init {self.head_init}; feeds ND only, not saved with the student"}


@dataclasses.dataclass(frozen=True)
class KDND(KD, _WithND):
  """KD++ (METHODS.md 5): KD with its term warmed up from 0, plus ND."""
  ce_weight: float = non_negative(1.0)
  kd_weight: float = non_negative(1.0)
  nd_weight: float = non_negative(2.0)
  warmup_epochs: int = positive(20)

  def kd_scale(self, epoch):
    return linear_warmup(epoch, self.warmup_epochs) * self.kd_weight

  def loss(self, student, teacher, labels, epoch, aux):
    total, terms = KD.loss(self, student, teacher, labels, epoch, aux)
    nd, norms = nd_term(student, teacher, labels, aux)
    return total + self.nd_weight * nd, terms | {"nd": self.nd_weight * nd} | norms

  def formula(self):
    return (f"{self.ce_weight:g} CE + min(1, e/{self.warmup_epochs}) {self.kd_weight:g} "
            f"KD(T={self.temperature:g}) + {self.nd_weight:g} ND")


@dataclasses.dataclass(frozen=True)
class DKDND(DKD, _WithND):
  """DKD++ (METHODS.md 5): DKD warmed up with epochs counted from 0, plus ND."""
  nd_weight: float = non_negative(1.0)
  warmup_nd: bool = False

  def warmup(self, epoch):
    return linear_warmup(epoch, self.warmup_epochs)

  def loss(self, student, teacher, labels, epoch, aux):
    total, terms = DKD.loss(self, student, teacher, labels, epoch, aux)
    nd, norms = nd_term(student, teacher, labels, aux)
    nd = (self.warmup(epoch) if self.warmup_nd else 1.0) * self.nd_weight * nd
    return total + nd, terms | {"nd": nd} | norms

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
