"""The narrow interface between a distillation method and the train step.

A method is a frozen dataclass built from `config.method`. Inside its one jit the train
step calls

    total, metrics = method.loss(student, teacher, labels, epoch, aux)

`student` / `teacher` are `ModelOutput`s (teacher None when `needs_teacher` is False);
a method with `num_views = 2` gets a (weak, strong) pair of each instead, from its
`views` (the augmentation is the method's choice). `epoch` is the
0-based epoch as a traced integer (for warm-ups). `metrics` holds each loss term
weighted as it enters the total, plus diagnostics that are not in the total.

A method owns its extras, built once before training from a `Setup`:
  * `extras(setup)`: an nnx.Module trained with the student (ND's projection head,
    FitNet's regressors). Its nnx.Params get gradients; its other nnx.Variables are
    mutable state the loss may update in place (memory banks): both are saved in
    checkpoints, neither in the final student.
  * `frozen(setup)`: a pytree computed from the teacher and the data (ND's class
    means), read by every step, never updated.
The loss sees them as `aux.extras` and `aux.frozen`, with `aux.index` the dataset
index of each example of the batch.
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from kd_jax import losses
from kd_jax.data import augment
from kd_jax.errors import UserError


class ModelOutput(NamedTuple):
  """What a kd_jax model returns: logits [B, C] and features ({'pooled': [B, d], ...})."""
  logits: jax.Array
  features: dict[str, Any]


class Aux(NamedTuple):
  """What a loss may read beside the model outputs (see the module docstring)."""
  extras: Any = None  # the module of Method.extras (or None)
  frozen: Any = None  # the pytree of Method.frozen (or None)
  index: Any = None  # int32 [B]: each example's index in the training split
  key: Any = None  # a PRNG key of this step, for what the method samples (detection RoIs)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a method builds its extras from, once, before training."""
  student: Any  # nnx.Module
  teacher: Any  # nnx.Module, or None for methods without a teacher
  feeder: Any  # kd_jax.data.feeders: info (classes, image size), train_pass()
  rngs: nnx.Rngs
  # cached(name, shape, compute) -> np.ndarray: compute() once per teacher x dataset,
  # kept beside the teacher checkpoint (or in the workdir) and reused when it fits.
  cached: Callable[[str, tuple, Callable[[], Any]], Any] = lambda name, shape, compute: compute()

  def feature_shapes(self, model):
    """The shapes of `model`'s features dict on a batch of 2 of this data's images."""
    graphdef, state = nnx.split(model)
    size = self.feeder.info.image_size
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[1], state, images)


def float32_outputs(output):
  """`output` with every floating array in float32: a bfloat16 model's logits and
  features reach the losses and the method's extras (connectors, heads, memory banks, all
  float32) in float32 (DESIGN.md Precision)."""
  return jax.tree.map(lambda x: x.astype(jnp.float32)
                      if jnp.issubdtype(x.dtype, jnp.floating) else x, output)


def non_negative(default):
  """A loss weight: a declared constraint of >= 0, checked when the method is built."""
  return dataclasses.field(default=default, metadata={"min": 0})


def positive(default):
  """A temperature or epoch count: declared > 0."""
  return dataclasses.field(default=default, metadata={"min": 0, "strict": True})


def one_of(default, choices):
  """A named option: declared to be one of `choices`."""
  return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def check_fields(method):
  """The declared constraints of every field, as one-line UserErrors naming the field."""
  for field in dataclasses.fields(method):
    value, rules = getattr(method, field.name), field.metadata
    where = f"config.method.{field.name}={value!r}"
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"{where} must be finite")
    if "min" in rules and (value < rules["min"] or rules.get("strict") and value == rules["min"]):
      raise UserError(f"{where} must be {'>' if rules.get('strict') else '>='} {rules['min']}")
    if "choices" in rules and value not in rules["choices"]:
      raise UserError(f"{where}; valid: {', '.join(rules['choices'])}")


def check_cswt_range(method):
  """CSWT maps agreement onto [t_low, t_high]: the range must not be empty or reversed."""
  if not method.t_low < method.t_high:
    raise UserError(f"config.method.t_low={method.t_low} must be < config.method.t_high="
                    f"{method.t_high}")


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def distillation_logits(student, teacher, standardize):
  """The logits the KD term compares: raw, or z-scored per sample (Sun et al. 2024)."""
  if standardize:
    return losses.logit_standardize(student.logits), losses.logit_standardize(teacher.logits)
  return student.logits, teacher.logits


def standardized(standardize):
  """The recipe card's note for logit standardization."""
  return ", both sides' logits z-scored per sample (LS)" if standardize else ""


def linear_warmup(epoch, warmup_epochs):
  """min(epoch / warmup, 1); callers choose whether epochs count from 0 or from 1."""
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0)


@dataclasses.dataclass(frozen=True)
class Method:
  """Base class: subclasses declare their config fields as dataclass fields."""
  needs_teacher = True
  num_views = 1
  # True: the teacher's BatchNorms normalise with each batch's statistics (PyTorch train
  # mode, as mdistiller's OFD leaves its teacher) instead of their running averages.
  teacher_batch_statistics = False
  # True: `loss` also takes the labels of a batch mixed by config.augment (mixup, cutmix,
  # label smoothing: a kd_jax.data.mixing.Mixed instead of int labels).
  accepts_mixed_labels = False
  # True: the loss reads features['stages'] / ['preact_stages'], which transformers lack.
  needs_feature_maps = False
  # True: the loss trains a distilled DeiT's two heads (features['cls_logits'/'dist_logits']).
  needs_distillation_token = False
  # The dataset kind the method trains on: 'classification' or 'detection' (a feeder's).
  task = "classification"

  def __post_init__(self):
    check_fields(self)

  def views(self, key, images):
    """The augmented uint8 views of a raw batch: by default one, crop + flip (CIFAR)."""
    return [augment.random_crop_flip(key, images)]

  def extras(self, setup: Setup):
    """The module trained with the student for this loss, or None."""
    del setup
    return None

  def frozen(self, setup: Setup):
    """The pytree this loss reads and never changes (from the teacher, the data), or None."""
    del setup
    return None

  def forward(self, trainable, teacher, views, targets, epoch, aux: Aux):
    """The networks on one batch and the loss: (total, metrics), inside the step's
    value_and_grad. `trainable` holds the student (and `extras`); `teacher` the frozen
    teacher module or None. Classification: the teacher and the student on the same
    views, then `loss`, plus the student's batch top-1 as a metric. A method of another
    task (detection: the teacher on the student's sampled RoIs) overrides this."""
    single = self.num_views == 1
    teacher_out = None
    if teacher is not None:
      teacher_out = [float32_outputs(ModelOutput(*teacher(view,
                                                          train=self.teacher_batch_statistics)))
                     for view in views]  # any BatchNorm statistics it updates are dropped
      teacher_out = jax.lax.stop_gradient(teacher_out[0] if single else tuple(teacher_out))
    student_out = [float32_outputs(ModelOutput(*trainable.student(view, train=True)))
                   for view in views]
    total, terms = self.loss(student_out[0] if single else tuple(student_out), teacher_out,
                             targets, epoch, aux)
    labels = getattr(targets, "labels", targets)
    top1 = 100 * jnp.mean(jnp.argmax(student_out[0].logits, -1) == labels)
    return total, terms | {"top1": top1}

  def loss(self, student, teacher, labels, epoch, aux: Aux):
    raise NotImplementedError

  def describe_extras(self, student_dim, teacher_dim) -> dict[str, str]:
    """Recipe-card lines {label: text} for the extras, given the pooled widths."""
    del student_dim, teacher_dim
    return {}

  def formula(self) -> str:
    """The total loss with this instance's weights, for the recipe card (e: 0-based epoch)."""
    raise NotImplementedError

  def describe_views(self) -> str:
    """The augmentation of `views`, for the recipe card."""
    return "random crop 32 (pad 4) + horizontal flip"
