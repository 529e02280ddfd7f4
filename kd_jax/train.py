"""The loop: one jitted step for frozen teacher + student, evaluation, logging, checkpoints.

Data flows one way: config -> data + models + method -> step -> metrics/checkpoints.
The whole CIFAR split sits on the devices; each step gathers its batch by index from a
per-epoch permutation, augments it and runs teacher and student, all inside one jit, so
the host only dispatches. Batches are sharded over a ('data',) mesh, parameters are
replicated: batch-level losses and BatchNorm see the global batch on any device count.
"""
import json
import os
import shutil
import threading
import time
from typing import Any

from absl import logging
import flax
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from kd_jax import checkpoint, data, guards, models, validate
from kd_jax import class_means as class_means_lib
from kd_jax.data import augment, batching
from kd_jax.errors import UserError
from kd_jax.methods import Aux, ModelOutput
from kd_jax.models import layers
from kd_jax.metrics import MetricWriter, Progress

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FIRST_NONFINITE = "first_nonfinite_step"  # reduced with min, not summed
_NEVER = np.iinfo(np.int32).max


class Diverged(UserError):
  """The loss became NaN/inf: stop, keep the last good checkpoint, say where."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # BatchNorm running statistics
  opt_state: Any


def make_optimizer(optim, steps_per_epoch):
  """SGD (momentum, optional Nesterov) + L2 weight decay on all parameters, as PyTorch's
  SGD(weight_decay=...); lr x decay_factor from the first step of each decay epoch.

  Returns (optimizer, schedule) so the loop can log the learning rate it used.
  """
  boundaries = {int(epoch * steps_per_epoch): optim.decay_factor for epoch in optim.decay_epochs}
  schedule = optax.piecewise_constant_schedule(optim.lr, boundaries)
  optimizer = optax.chain(optax.add_decayed_weights(optim.weight_decay),
                          optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))
  return optimizer, schedule


def data_mesh(devices=None):
  """A 1-D ('data',) mesh over `devices` (default: all), with automatic sharding
  propagation: we only pin the batch, XLA places the rest."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))


class StudentWithHead(nnx.Module):
  """What the optimizer trains: the student and, for some methods, a loss-only head."""

  def __init__(self, student, head=None):
    self.student, self.head = student, head

  def __call__(self, images, train):
    return self.student(images, train=train)


class Trainer:
  """Holds the jitted steps of one run; `run` trains (or resumes) and evaluates.

  `head` is the method's trainable extra (see Method.make_head) and `class_means` the
  teacher class means of methods that need them.
  """

  def __init__(self, config, dataset, student, teacher, method, mesh, head=None,
               class_means=None):
    self.config, self.dataset, self.method, self.mesh = config, dataset, method, mesh
    self.batch_size = config.batch_size
    self.steps_per_epoch = batching.steps_per_epoch(self._num_train_examples(), self.batch_size)
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.optimizer, self.schedule = make_optimizer(config.optim, self.steps_per_epoch)
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self.replicated = replicated = NamedSharding(mesh, P())

    trainable = layers.set_batch_norm_groups(StudentWithHead(student, head),
                                             config.student.bn_group_size)
    self.student_def, params, model_state = nnx.split(trainable, nnx.Param, ...)
    self.class_means = None if class_means is None else jax.device_put(
        jnp.asarray(class_means, jnp.float32), replicated)
    self.state = jax.device_put(TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
        opt_state=self.optimizer.init(params)), replicated)
    if teacher is not None:
      self.teacher_def, teacher_state = nnx.split(teacher)
      self.teacher_state = jax.device_put(teacher_state, replicated)
    else:
      self.teacher_def = self.teacher_state = None
    self.mean = jnp.asarray(dataset.mean, jnp.float32)
    self.std = jnp.asarray(dataset.std, jnp.float32)
    self._setup_data(replicated)
    self._metric_shapes = jax.eval_shape(self._step, self.state, self.teacher_state,
                                         *self._example_train_batch())[1]
    self.train_step = jax.jit(self._accumulating_step, donate_argnums=(0, 1))
    self.stop_requested = threading.Event()  # set by a signal handler to stop cleanly
    self.eval_step = jax.jit(self._eval_step, static_argnums=(0,))

  # ---------------------------------------------- where batches come from (device data)
  # The whole split lives on the devices; a step gathers its batch by index and augments
  # it inside the jit. kd_jax/train_imagenet.py overrides these for host-fed data.

  def _num_train_examples(self):
    return len(self.dataset.train_labels)

  def _setup_data(self, replicated):
    dataset = self.dataset
    self.train_images, self.train_labels, self.test_images, self.test_labels = jax.device_put(
        (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels),
        replicated)
    self.permutation = jax.jit(lambda epoch: batching.epoch_permutation(
        self.config.seed, epoch, len(dataset.train_labels)), out_shardings=replicated)

  def _example_train_batch(self):
    return self.train_images, self.train_labels, self.permutation(0)

  def _train_batches(self, epoch):
    """The train_step arguments after (state, sums, teacher_state), step after step."""
    batch = (self.train_images, self.train_labels, self.permutation(epoch))
    while True:
      yield batch

  def _views(self, step, images, labels, permutation):
    """This step's batch: (weak view[, strong view]) normalised, and the labels."""
    index = batching.batch_indices(permutation, step % self.steps_per_epoch, self.batch_size)
    index = jax.lax.with_sharding_constraint(index, self.batch_sharding)
    key = jax.random.fold_in(jax.random.key(self.config.seed), step)
    views = self.method.views(key, images[index])
    return [augment.normalize(view, self.mean, self.std) for view in views], labels[index]

  def _test_batches(self):
    """The eval_step arguments after (graphdef, variables), batch after batch."""
    for index, mask in batching.eval_batches(len(self.dataset.test_labels),
                                             self.config.eval_batch_size):
      yield (self.test_images, self.test_labels, jnp.asarray(index),
             jnp.asarray(mask, jnp.float32))

  def _eval_inputs(self, images, labels, index, mask):
    """uint8 images, labels and validity mask of one eval batch."""
    index = jax.lax.with_sharding_constraint(index, self.batch_sharding)
    return images[index], labels[index], mask

  def data_state(self):
    """Position of a host-side input pipeline, saved with checkpoints (none here)."""
    return None

  def restore_data_state(self, state):
    del state

  # ------------------------------------------------------------------ jitted pieces

  def _step(self, state, teacher_state, *batch):
    """One optimizer step; returns the new state and this batch's metrics."""
    epoch = state.step // self.steps_per_epoch
    views, targets = self._views(state.step, *batch)
    single = self.method.num_views == 1
    teacher_out = None
    if self.method.needs_teacher:
      teacher = nnx.merge(self.teacher_def, teacher_state)
      teacher_out = [ModelOutput(*teacher(view, train=False)) for view in views]
      teacher_out = jax.lax.stop_gradient(teacher_out[0] if single else tuple(teacher_out))

    trainable = nnx.merge(self.student_def, state.params, state.model_state)

    def loss_fn(trainable):
      student_out = [ModelOutput(*trainable.student(view, train=True)) for view in views]
      student_out = student_out[0] if single else tuple(student_out)
      total, terms = self.method.loss(student_out, teacher_out, targets, epoch,
                                      Aux(trainable.head, self.class_means))
      first = student_out if single else student_out[0]
      return total, (terms, first.logits)

    # nnx.value_and_grad: gradients w.r.t. the nnx.Params only; the BatchNorm statistics
    # (and dropout RNG counts) updated in the forward pass land back in `trainable`.
    (total, (terms, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(trainable)
    _, _, model_state = nnx.split(trainable, nnx.Param, ...)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              model_state=model_state, opt_state=opt_state)
    finite = jnp.isfinite(total)
    metrics = {"loss": total, **terms, "top1": 100 * jnp.mean(jnp.argmax(logits, -1) == targets),
               _FIRST_NONFINITE: jnp.where(finite, _NEVER, state.step)}
    if self.config.skip_nonfinite:  # keep the old state, only count the step
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                               state.replace(step=new_state.step))
      metrics["skipped_steps"] = 1 - finite.astype(jnp.int32)
    return new_state, metrics

  def _accumulating_step(self, state, metric_sums, teacher_state, *batch):
    """_step plus on-device running sums of its metrics: no host sync between log points."""
    state, metrics = self._step(state, teacher_state, *batch)
    first_nonfinite = jnp.minimum(metric_sums.pop(_FIRST_NONFINITE), metrics.pop(_FIRST_NONFINITE))
    return state, jax.tree.map(jnp.add, metric_sums, metrics) | {_FIRST_NONFINITE: first_nonfinite}

  def _zero_metrics(self):
    """Fresh metric sums, replicated like the step's output (else the step recompiles)."""
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._metric_shapes)
    zeros[_FIRST_NONFINITE] = jnp.asarray(_NEVER, jnp.int32)
    return jax.device_put(zeros, self.replicated)

  def _eval_step(self, graphdef, variables, *batch):
    """Sums of correct top-1/top-5 and CE over the valid (mask=1) samples of one batch."""
    model = nnx.merge(graphdef, *variables)
    images, targets, mask = self._eval_inputs(*batch)
    logits, _ = model(augment.normalize(images, self.mean, self.std), train=False)
    logits = logits.astype(jnp.float32)
    top5 = jax.lax.top_k(logits, 5)[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return {"top1": jnp.sum(mask * (top5[:, 0] == targets)),
            "top5": jnp.sum(mask * jnp.any(top5 == targets[:, None], axis=-1)),
            "ce": jnp.sum(mask * ce), "count": jnp.sum(mask)}

  def evaluate(self, graphdef, variables):
    """Top-1 / top-5 (%) and CE over the whole test split, each sample counted once."""
    sums = None
    for batch in self._test_batches():
      batch_sums = self.eval_step(graphdef, variables, *batch)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    sums = jax.device_get(sums)
    count = float(sums["count"])
    return {"top1": 100 * float(sums["top1"]) / count, "top5": 100 * float(sums["top5"]) / count,
            "ce": float(sums["ce"]) / count}

  # ------------------------------------------------------------------ the loop

  def run(self, workdir, max_steps=None):
    """Trains from the newest checkpoint in `workdir` (or from scratch) to the end.

    Stops early, with a checkpoint (mid-epoch if need be), after global step `max_steps`
    or once `stop_requested` is set (preemption); the returned progress then has
    'stopped_at', and the same call resumes exactly there.
    """
    checkpoints = checkpoint.RunCheckpoints(workdir, self.config.checkpoint_keep)
    writer = MetricWriter(workdir)
    try:
      progress = {"best_top1": None, "best_epoch": None, "last_top1": None, "teacher_top1": None}
      if checkpoints.latest_step() is not None:
        self.state, progress = checkpoints.restore(checkpoint.abstract_like(self.state))
        self.restore_data_state(progress.pop("data_state", None))
        logging.info("resumed from step %d in %s", checkpoints.latest_step(), workdir)
      step = int(jax.device_get(self.state.step))
      if self.teacher_state is not None and progress["teacher_top1"] is None:
        teacher_eval = self.evaluate(self.teacher_def, (self.teacher_state,))
        progress["teacher_top1"] = teacher_eval["top1"]
        logging.info("teacher test top-1 %.2f%%", teacher_eval["top1"])
        writer.write(step, "teacher_eval", teacher_eval)

      stop_at = min(max_steps or self.total_steps, self.total_steps)
      meter = Progress(self.total_steps, self.batch_size, step)
      while step < stop_at and not self._stop_agreed(step):
        epoch = step // self.steps_per_epoch
        step = self._train_epoch(epoch, step, stop_at, writer, meter)
        if step % self.steps_per_epoch == 0:
          self._evaluate_epoch(epoch, step, progress, writer)
        checkpoints.save(step, self.state, progress | {"data_state": self.data_state()})
      if step < self.total_steps:
        logging.info("stopped at step %d of %d (epoch %d); rerun the same command to resume",
                     step, self.total_steps, step // self.steps_per_epoch + 1)
        progress = progress | {"stopped_at": step}
    finally:
      checkpoints.close()
      writer.close()
    return progress

  def _train_epoch(self, epoch, step, stop_at, writer, meter):
    """Steps until the end of `epoch`, `stop_at` or a stop request; returns the step."""
    batches = self._train_batches(epoch)
    end = min((epoch + 1) * self.steps_per_epoch, stop_at)
    sums, sums_steps = self._zero_metrics(), 0
    while step < end and not self._stop_agreed(step):
      self.state, sums = self.train_step(self.state, sums, self.teacher_state, *next(batches))
      step, sums_steps = step + 1, sums_steps + 1
      if step % self.config.log_every_steps == 0 or step == end:
        sums = jax.device_get(sums)
        first_nonfinite = int(sums.pop(_FIRST_NONFINITE))
        means = {k: float(v) / sums_steps for k, v in sums.items()}
        if first_nonfinite != _NEVER and not self.config.skip_nonfinite:
          terms = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
          raise Diverged(f"non-finite loss at step {first_nonfinite + 1} (means over steps "
                         f"{step - sums_steps + 1}-{step}: {terms}); the last good checkpoint "
                         "is kept: lower config.optim.lr or set config.skip_nonfinite=True")
        means["images_per_second"] = meter.line(step, epoch, self.config.num_epochs, means)
        means["lr"] = float(self.schedule(step - 1))
        writer.write(step, "train", means)
        sums, sums_steps = self._zero_metrics(), 0
    return step

  def _stop_agreed(self, step):
    """Whether to stop now (preemption). Multi-host: every host stops at the same step,
    agreed at log points, the only places the hosts compare notes."""
    if jax.process_count() == 1:
      return self.stop_requested.is_set()
    if step % self.config.log_every_steps:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.stop_requested.is_set()))
    return bool(np.any(flags))

  def _evaluate_epoch(self, epoch, step, progress, writer):
    """Test-set evaluation at the end of an epoch; updates best/last in `progress`."""
    results = self.evaluate(self.student_def, (self.state.params, self.state.model_state))
    if progress["best_top1"] is None or results["top1"] > progress["best_top1"]:
      progress["best_top1"], progress["best_epoch"] = results["top1"], epoch + 1
    progress["last_top1"] = results["top1"]
    writer.write(step, "eval", results | {"epoch": epoch + 1, "best_top1": progress["best_top1"]})
    logging.info("epoch %d/%d  test top-1 %.2f%%  top-5 %.2f%%  (best %.2f%% at epoch %d)",
                 epoch + 1, self.config.num_epochs, results["top1"], results["top5"],
                 progress["best_top1"], progress["best_epoch"])

  def student(self):
    """The trained student model (without any loss-only head)."""
    return nnx.merge(self.student_def, self.state.params, self.state.model_state).student


def create_student(config, num_classes):
  """The student as the recipe initialises it (config.student.classifier_init)."""
  return models.create(config.student.model, num_classes, rngs=nnx.Rngs(config.seed),
                       classifier_init=config.student.classifier_init)


def _versions():
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  return {name: metadata.version(name) for name in
          ("kd_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")}


def _flat(tree, prefix=""):
  """{'optim.lr': 0.05, ...} of a nested config dict."""
  if isinstance(tree, dict):
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def _check_config_matches(config, workdir):
  """A workdir holds one experiment, finished or not: refuse another config, naming the
  fields that differ."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return
  with open(config_path) as f:
    stored = _flat(json.load(f))
  current = _flat(json.loads(config.to_json_best_effort()))
  differ = sorted(key for key in stored.keys() | current.keys()
                  if stored.get(key) != current.get(key))
  if differ:
    shown = ", ".join(f"{key} {stored.get(key)!r} -> {current.get(key)!r}"
                      for key in differ[:4]) + (" ..." if len(differ) > 4 else "")
    raise UserError(f"{workdir} holds a run of another config ({shown}); use a new "
                    "--workdir, or --overwrite to delete that run")


def _record_run(config, workdir, num_classes):
  """Writes the resolved config and the package versions, so every number is traceable."""
  config_path = os.path.join(workdir, "config.json")
  resolved = config.to_json_best_effort(sort_keys=True, indent=2)
  if jax.process_index() == 0:
    with open(config_path, "w") as f:
      f.write(resolved)
    with open(os.path.join(workdir, checkpoint.RUN_INFO), "w") as f:
      json.dump({"model": config.student.model, "num_classes": num_classes,
                 "method": config.method.name, "devices": jax.device_count(),
                 "platform": jax.devices()[0].platform, "versions": _versions()}, f, indent=2)


def _train_teacher(config, workdir, dataset):
  """Bootstraps a teacher (smoke runs): a CE run of config.teacher.model in workdir/teacher."""
  path = os.path.join(workdir, "teacher")
  teacher_config = ml_collections.ConfigDict(config.to_dict())
  teacher_config.method = ml_collections.ConfigDict({"name": "ce"})
  teacher_config.student.model = config.teacher.model
  teacher_config.num_epochs = config.teacher.train_epochs
  teacher_config.teacher.train_epochs = 0
  logging.info("training the teacher %s for %d epochs in %s", config.teacher.model,
               config.teacher.train_epochs, path)
  train_and_evaluate(teacher_config, path, dataset)
  return path


def _load_dataset(config):
  """CIFAR arrays for the device, or (ImageNet) a host pipeline."""
  if config.data.dataset == "imagenet2012":
    from kd_jax import train_imagenet  # pylint: disable=g-import-not-at-top
    return train_imagenet.load(config)
  return data.load(config.data.dataset, config.data.source, config.data.data_dir or None,
                   synthetic_train_size=config.data.synthetic_train_size,
                   synthetic_test_size=config.data.synthetic_test_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, dataset=None,
                       max_steps=None, overwrite=False):
  """Runs (or resumes, or reports the finished) experiment `config` in `workdir`.

  `dataset` skips loading (tests, the smoke teacher); `max_steps` stops early with a
  resumable checkpoint (see Trainer.run); `overwrite` deletes a workdir that holds a
  run of another config instead of refusing it. A run stopped by SIGTERM/SIGINT returns
  progress with 'stopped_at' and 'signal'.
  """
  method = validate.check(config)
  if "://" in workdir:
    raise UserError(f"--workdir={workdir}: remote URLs are not supported; mount the bucket "
                    "(e.g. gcsfuse) and pass the mount path")
  workdir = os.path.abspath(workdir)
  if overwrite and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  _check_config_matches(config, workdir)
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    logging.info("%s is complete: best top-1 %.2f%%, last %.2f%%", workdir,
                 summary["best_top1"], summary["last_top1"])
    return summary
  if dataset is None:
    dataset = _load_dataset(config)
  # Everything that can be wrong with the inputs fails here, before the workdir is touched.
  teacher_dtype = DTYPES[config.teacher.dtype]
  teacher, teacher_path = None, config.teacher.checkpoint
  if method.needs_teacher and teacher_path:
    teacher = checkpoint.load_teacher(teacher_path, config.teacher.model, dataset.num_classes,
                                      dtype=teacher_dtype)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise UserError(f"cannot create --workdir={workdir}: {error.strerror}") from None
  with guards.workdir_lock(workdir):
    return _run_locked(config, workdir, dataset, method, teacher, teacher_path, max_steps)


def _run_locked(config, workdir, dataset, method, teacher, teacher_path, max_steps):
  """The part of train_and_evaluate that writes into the (locked) workdir."""
  teacher_dtype = DTYPES[config.teacher.dtype]
  summary_path = os.path.join(workdir, "summary.json")
  _record_run(config, workdir, dataset.num_classes)
  if method.needs_teacher and teacher is None:
    teacher_path = _train_teacher(config, workdir, dataset)
    teacher = checkpoint.load_teacher(teacher_path, config.teacher.model, dataset.num_classes,
                                      dtype=teacher_dtype)

  mesh = data_mesh()
  student = create_student(config, dataset.num_classes)
  head = method.make_head(models.pooled_dim(config.student.model),
                          models.pooled_dim(config.teacher.model), nnx.Rngs(config.seed + 1))
  class_means = None
  if method.needs_class_means:
    class_means = class_means_lib.cached_class_means(config, teacher, teacher_path, dataset,
                                                     mesh, workdir)
  trainer_class = Trainer
  if not isinstance(dataset, data.Dataset):
    from kd_jax import train_imagenet  # pylint: disable=g-import-not-at-top
    trainer_class = train_imagenet.HostFedTrainer
  trainer = trainer_class(config, dataset, student, teacher, method, mesh, head, class_means)
  start = time.perf_counter()
  with guards.stop_on_signals(trainer) as signals:
    progress = trainer.run(workdir, max_steps)
  if "stopped_at" in progress:
    return progress | ({"signal": signals[0]} if signals else {})
  checkpoint.save_final_student(trainer.student(), workdir)
  summary = {"best_top1": progress["best_top1"], "best_epoch": progress["best_epoch"],
             "last_top1": progress["last_top1"], "teacher_top1": progress["teacher_top1"],
             "epochs": config.num_epochs, "seconds_this_session": time.perf_counter() - start}
  if jax.process_index() == 0:
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=2)
  logging.info("done: best top-1 %.2f%% (epoch %d), last %.2f%%", summary["best_top1"],
               summary["best_epoch"], summary["last_top1"])
  return summary
