"""The train step as a pure function: `step(state, metric_sums, frozen, batch)`.

Everything the step reads is an argument: the train state (donated), on-device running
sums of the metrics (donated), `frozen` (teacher state and the method's frozen extras,
never donated, never updated) and `batch` (what the feeder hands over for this step).
The factory closes over static structure only: model graphs, the method, the optimizer,
the feeder's jit-side view of a batch.
"""
from typing import Any

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax.data import augment
from kd_jax.methods import Aux

FIRST_NONFINITE = "first_nonfinite_step"  # reduced with min, not summed
BATCH_AUGMENT_STREAM = 0x6d6978  # folded into the step's key: erasing / mixing draws
METHOD_STREAM = 0x6d6574  # folded into the step's key: the method's own draws (Aux.key)
NEVER = np.iinfo(np.int32).max


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # BatchNorm statistics, dropout RNG counts, a method's mutable state
  opt_state: Any


# The optimizer fields beside lr / momentum / nesterov / weight_decay / decay_epochs /
# decay_factor, at values that keep the SGD + step-decay recipe of every CIFAR config.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "warmup_cosine", "warmup_multistep")
OPTIM_DEFAULTS = dict(name="sgd", schedule="step", b1=0.9, b2=0.999, eps=1e-8,
                      warmup_epochs=0.0, min_lr=0.0, decay_1d=True, decay_steps=(),
                      warmup_steps=0, warmup_factor=0.001)


def make_schedule(optim, steps_per_epoch, num_epochs):
  """The learning rate of each step.

  step: lr x decay_factor from the first step of each decay epoch (mdistiller).
  warmup_cosine: linear from 0 over warmup_epochs, then a half cosine from lr to min_lr at
  the end of training, both evaluated per step at epoch = step / steps_per_epoch (the ND
  authors' DeiT `adjust_learning_rate`, MAE's).
  warmup_multistep: detectron2's iteration schedule (solver/build.py, WarmupParamScheduler
  over MultiStepParamScheduler): lr x decay_factor^(number of decay_steps <= step), times
  warmup_factor (1 - a) + a with a = step / warmup_steps during the first warmup_steps.
  """
  if optim.schedule == "warmup_multistep":
    decay = optax.piecewise_constant_schedule(
        optim.lr, {int(step): optim.decay_factor for step in optim.decay_steps})
    warmup = max(int(optim.warmup_steps), 1)

    def schedule(step):
      progress = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
      return decay(step) * (optim.warmup_factor * (1 - progress) + progress)
    return schedule
  if optim.schedule == "step":
    boundaries = {int(epoch * steps_per_epoch): optim.decay_factor
                  for epoch in optim.decay_epochs}
    return optax.piecewise_constant_schedule(optim.lr, boundaries)
  return optax.warmup_cosine_decay_schedule(
      0.0, optim.lr, warmup_steps=int(round(optim.warmup_epochs * steps_per_epoch)),
      decay_steps=num_epochs * steps_per_epoch, end_value=optim.min_lr)


def decay_mask(params):
  """True where weight decay applies with decay_1d=False: matrices and kernels, not biases
  or other 1-D parameters (timm's `param_groups_weight_decay`, the ND authors' DeiT)."""
  def decays(path, leaf):
    name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
    return leaf.ndim > 1 and name != "bias"
  return jax.tree.map_with_path(decays, params)


def make_optimizer(optim, steps_per_epoch, num_epochs):
  """SGD (momentum, optional Nesterov) + L2 weight decay, as PyTorch's SGD(weight_decay=...),
  or AdamW with decoupled weight decay, as PyTorch's AdamW (the same update: p <- p -
  lr wd p - lr Adam(g)); on every parameter, or with `decay_1d=False` on matrices only.

  Returns (optimizer, schedule) so the loop can log the learning rate it used.
  """
  optim = ml_collections.ConfigDict({**OPTIM_DEFAULTS, **optim})
  schedule = make_schedule(optim, steps_per_epoch, num_epochs)
  mask = None if optim.decay_1d else decay_mask
  if optim.name == "adamw":
    return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay, mask=mask), schedule
  optimizer = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask),
                          optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))
  return optimizer, schedule


def frozen_inputs(teacher_state, extras):
  """The step's `frozen` argument: what it reads and never changes."""
  return {"teacher": teacher_state, "extras": extras}


def make_train_step(*, method, feeder, optimizer, trainable_def, teacher_def,
                    steps_per_epoch, skip_nonfinite=False, batch_augment=None, seed=0):
  """One optimizer step plus running sums of its metrics (no host sync between logs).

  `trainable_def` is the graph of what the optimizer trains (student + the method's
  extras module); `teacher_def` the frozen teacher's graph, or None. `batch_augment`
  (kd_jax.data.batch_augment, config.augment) erases and mixes the normalised batch
  before both networks see it, keyed by (seed, step). With `metric_sums=None` the step
  returns this step's metrics instead of sums.
  """
  mean, std = feeder.info.mean, feeder.info.std

  def one_step(state, frozen, batch):
    epoch = state.step // steps_per_epoch
    views, targets, index = feeder.train_inputs(batch, state.step, method)
    if feeder.info.mean is not None:  # else the model normalises (detectron2's detectors)
      views = [augment.normalize(view, mean, std) for view in views]
    key = jax.random.fold_in(jax.random.key(batch.get("seed", seed)), state.step)
    if batch_augment is not None and batch_augment.active:
      views[0], targets = batch_augment(jax.random.fold_in(key, BATCH_AUGMENT_STREAM),
                                        views[0], targets)
    trainable = nnx.merge(trainable_def, state.params, state.model_state)

    def loss_fn(trainable):
      # Merged inside the differentiated function, so a method may run the teacher on
      # what the student produced; it never gets gradients (not an argument). Copied:
      # a teacher in train mode (OFD) updates its BatchNorm statistics, which needs
      # Variables of this trace, not the step's.
      teacher = (nnx.merge(teacher_def, frozen["teacher"], copy=True)
                 if method.needs_teacher else None)
      return method.forward(trainable, teacher, views, targets, epoch,
                            Aux(trainable.extras, frozen["extras"], index,
                                jax.random.fold_in(key, METHOD_STREAM)))

    # nnx.value_and_grad: gradients w.r.t. the nnx.Params only; the other variables the
    # forward pass updates (BatchNorm statistics, dropout RNG counts, a method's state)
    # land back in `trainable`.
    (total, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(trainable)
    _, _, model_state = nnx.split(trainable, nnx.Param, ...)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              model_state=model_state, opt_state=opt_state)
    finite = jnp.isfinite(total)
    metrics = {"loss": total, **terms, FIRST_NONFINITE: jnp.where(finite, NEVER, state.step)}
    if skip_nonfinite:  # keep the old state, only count the step
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                               state.replace(step=new_state.step))
      metrics["skipped_steps"] = 1 - finite.astype(jnp.int32)
    return new_state, metrics

  def step(state, metric_sums, frozen, batch):
    state, metrics = one_step(state, frozen, batch)
    if metric_sums is None:
      return state, metrics
    metric_sums = dict(metric_sums)
    first = jnp.minimum(metric_sums.pop(FIRST_NONFINITE), metrics.pop(FIRST_NONFINITE))
    return state, jax.tree.map(jnp.add, metric_sums, metrics) | {FIRST_NONFINITE: first}

  return step


def step_flops(jitted_step, *args):
  """XLA's count of the floating-point operations of one call of `jitted_step` on `args`
  (the global batch: augmentation, teacher forward, student forward and backward, update),
  or None where the backend has no cost analysis. From the lowered program, before it is
  partitioned over devices or compiled: costs one trace, compiles nothing."""
  return lowered_flops(jitted_step.lower(*args))


def lowered_flops(lowered):
  """XLA's FLOP count of a lowered program, or None where the backend has none."""
  try:
    cost = lowered.cost_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def metric_shapes(step, state, frozen, batch):
  """The shapes of `step`'s metrics (traced once, nothing run)."""
  return jax.eval_shape(lambda s, f, b: step(s, None, f, b)[1], state, frozen, batch)


def init_metric_sums(shapes, sharding):
  """Zero sums of metrics of `shapes`, placed with `sharding` (as the step returns them:
  fresh sums after a log point must not make the step compile again)."""
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  zeros[FIRST_NONFINITE] = jnp.full(shapes[FIRST_NONFINITE].shape, NEVER, jnp.int32)
  return jax.device_put(zeros, sharding)
