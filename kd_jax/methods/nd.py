"""ND, feature norm and direction (METHODS.md 5, 12): an add-on to any method with a teacher.

`with_nd(Base)` is Base's loss plus the ND term, written once for every base:

  total = Base.loss + s(e) nd_weight ND,   s(e) = min(1, e/nd_warmup_epochs) (1 when 0)

with e the 0-based epoch, as the ND authors count. When the student's pooled width
differs from the teacher's, ND sees the student feature through a projection head
BatchNorm1d -> Dropout(0.5) -> Linear(d_s, d_t), trained with the student. The teacher's
class means are frozen: one pass of the frozen teacher over the training split, cached
beside the teacher checkpoint. A base's own extras and ND's head live in one extras module
(`NDExtras`; just the head when the base has none), its frozen pytree beside the class
means (`frozen['base']`), and the base's loss sees its own as before. Multi-view bases
(MLKD, multi-view CSKD): ND sees the weak (first) view only, the view their confidence
masks come from.

The published combinations change their base's warm-up too: KD++ warms the KD term up and
DKD++ counts DKD's from epoch 0 (the subclasses below), ReviewKD++ counts from 0 as well
(reviewkd.ReviewKDND); DIST++ is the plain add-on on DIST with its optional warm-up set, and
CSKD+ND the plain add-on (unpublished).
KD++  = CE + min(1, e/warmup) kd_weight KD(T) + nd_weight ND
DKD++ = CE + min(1, e/warmup) DKD(alpha, beta, T) + nd_weight ND
        (with `warmup_nd`, as the authors' ImageNet DKD++: the ND term warmed up too)
"""
import dataclasses

from flax import nnx
import jax.numpy as jnp
import numpy as np

from kd_jax import evaluation, losses, models
from kd_jax.errors import UserError
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
  """What every ND method owns: the projection head and the teacher class means."""
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


class NDExtras(nnx.Module):
  """A base method's extras module beside ND's projection head (None: widths agree)."""

  def __init__(self, base, head):
    self.base, self.head = base, head


@dataclasses.dataclass(frozen=True)
class WithND(_WithND):
  """ND added to the method after it in the MRO: `class X(WithND, Base)` (see with_nd).

  `super(_WithND, self)` is that base method (the MRO runs X, WithND, _WithND, Base, ...);
  `_WithND`'s own methods give ND's head, class means and card line.
  """
  nd_weight: float = non_negative(1.0)
  nd_warmup_epochs: int = non_negative(0)

  def nd_scale(self, epoch):
    """The ND weight's warm-up factor at `epoch` (0-based): 1 without a warm-up."""
    return linear_warmup(epoch, self.nd_warmup_epochs) if self.nd_warmup_epochs else 1.0

  def extras(self, setup):
    base, head = super(_WithND, self).extras(setup), _WithND.extras(self, setup)
    return head if base is None else NDExtras(base, head)

  def frozen(self, setup):
    base = super(_WithND, self).frozen(setup)
    means = _WithND.frozen(self, setup)
    return means if base is None else means | {"base": base}

  def describe_extras(self, student_dim, teacher_dim):
    return (super(_WithND, self).describe_extras(student_dim, teacher_dim)
            | _WithND.describe_extras(self, student_dim, teacher_dim))

  def loss(self, student, teacher, labels, epoch, aux):
    if isinstance(aux.extras, NDExtras):
      extras, head = aux.extras.base, aux.extras.head
    else:  # the base has no extras: aux.extras is ND's head (or None)
      extras, head = None, aux.extras
    frozen = aux.frozen.get("base") if isinstance(aux.frozen, dict) else None
    total, metrics = super(_WithND, self).loss(student, teacher, labels, epoch,
                                               aux._replace(extras=extras, frozen=frozen))
    if self.num_views > 1:  # the weak view, the first
      student, teacher = student[0], teacher[0]
    nd, norms = nd_term(student, teacher, labels, aux._replace(extras=head))
    nd = self.nd_scale(epoch) * self.nd_weight * nd
    return total + nd, metrics | {"nd": nd} | norms

  def nd_formula(self):
    """The ND term of the recipe card: its warm-up, weight and view."""
    warmup = f"min(1, e/{self.nd_warmup_epochs}) " if self.nd_warmup_epochs else ""
    view = " (weak view)" if self.num_views > 1 else ""
    return f"{warmup}{self.nd_weight:g} ND{view}"

  def formula(self):
    return f"{super(_WithND, self).formula()} + {self.nd_formula()}"


def with_nd(base):
  """`base` + ND (METHODS.md 12): a dataclass with base's fields and ND's."""
  cls = type(f"{base.__name__}ND", (WithND, base),
             {"__doc__": f"{base.__name__} + nd_weight ND (METHODS.md 12).",
              "__module__": __name__, "nd_base": base})
  return dataclasses.dataclass(frozen=True)(cls)


@dataclasses.dataclass(frozen=True)
class KDND(WithND, KD):
  """KD++ (METHODS.md 5): KD with its term warmed up from 0, plus ND."""
  ce_weight: float = non_negative(1.0)
  kd_weight: float = non_negative(1.0)
  nd_weight: float = non_negative(2.0)
  warmup_epochs: int = positive(20)

  def kd_scale(self, epoch):
    return linear_warmup(epoch, self.warmup_epochs) * self.kd_weight

  def formula(self):
    return (f"{self.ce_weight:g} CE + min(1, e/{self.warmup_epochs}) {self.kd_weight:g} "
            f"KD(T={self.temperature:g}) + {self.nd_formula()}")


@dataclasses.dataclass(frozen=True)
class DKDND(WithND, DKD):
  """DKD++ (METHODS.md 5): DKD warmed up with epochs counted from 0, plus ND."""
  warmup_nd: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.warmup_nd and self.nd_warmup_epochs:
      raise UserError("config.method.warmup_nd (ND warmed up with DKD) and "
                      "config.method.nd_warmup_epochs: set one")

  def warmup(self, epoch):
    return linear_warmup(epoch, self.warmup_epochs)

  def nd_scale(self, epoch):
    return self.warmup(epoch) if self.warmup_nd else super().nd_scale(epoch)

  def nd_formula(self):
    warmup = f"min(1, e/{self.warmup_epochs}) " if self.warmup_nd else ""
    return warmup + super().nd_formula()

  def formula(self):
    return (f"{self.ce_weight:g} CE + min(1, e/{self.warmup_epochs}) DKD(alpha={self.alpha:g}, "
            f"beta={self.beta:g}, T={self.temperature:g}) + {self.nd_formula()}")


@dataclasses.dataclass(frozen=True)
class CSKDND(WithND, CSKD):
  """CSKD (+CSWT) + nd_weight ND: a combination no one has published."""

  def formula(self):
    return CSKD.formula(self, extra=f" + {self.nd_formula()}")
