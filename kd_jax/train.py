"""The loop: a pure jitted step driven by a short loop whose side effects are hooks.

Data flows one way: config -> feeder + models + method (+ its extras) -> step ->
metrics/checkpoints. The step is `kd_jax.step` (teacher and student in one jit), the
batches come from a feeder (`kd_jax.data.feeders`), every pass that is not a training
step goes through `kd_jax.evaluation`. Batches are sharded over a ('data',) mesh,
parameters are replicated: batch-level losses and BatchNorm see the global batch on any
device count. This file knows no dataset and no method by name.
"""
import dataclasses
import json
import os
import shutil
import threading
import time
from typing import Any, Callable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from kd_jax import (checkpoint, compile_cache, evaluation, guards, models, profiling,
                    run_files, validate)
from kd_jax import step as step_lib
from kd_jax.data import batch_augment, feeders
from kd_jax.errors import UserError
from kd_jax.methods import Setup
from kd_jax.models import layers
from kd_jax.metrics import MetricWriter, Progress

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Diverged(UserError):
  """The loss became NaN/inf: stop, keep the last good checkpoint, say where."""


def data_mesh(devices=None):
  """A 1-D ('data',) mesh over `devices` (default: all), with automatic sharding
  propagation: we only pin the batch, XLA places the rest."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))


class StudentWithExtras(nnx.Module):
  """What the optimizer trains: the student and the method's extras (Method.extras)."""

  def __init__(self, student, extras=None):
    self.student, self.extras = student, extras

  def __call__(self, images, train):
    return self.student(images, train=train)


@dataclasses.dataclass
class RunResult:
  """How a run ended: finished (what summary.json holds) or stopped early.

  best/last/teacher_top1 hold the task's `metric`: test top-1 (%) for classification,
  COCO box AP (%) for detection.
  """
  best_top1: float | None
  best_epoch: int | None
  last_top1: float | None
  teacher_top1: float | None
  epochs: int
  seconds_this_session: float | None = None
  metric: str = "top1"
  stopped_at: int | None = None  # the global step the same command resumes from
  signal: int | None = None  # the signal (SIGTERM/SIGINT) that stopped it
  # This session's training speed: the median over log intervals after the first (which
  # compiles), and XLA's FLOPs of one step (kd_jax.step.step_flops) where it counts them.
  images_per_second: float | None = None
  step_flops: float | None = None
  flops_per_second: float | None = None

  @property
  def finished(self):
    return self.stopped_at is None


@dataclasses.dataclass
class Hooks:
  """Everything the loop does besides stepping: the run's side effects."""
  log: Callable[[int, Any, int], None]  # (step, metric sums, steps summed) at log points
  evaluate: Callable[[int, int], None]  # (epoch, step) at the end of each epoch
  checkpoint: Callable[[int], None]  # (step) after each epoch, and when stopping early
  stop: Callable[[int], bool]  # (step) -> stop now (preemption)
  profile: Callable[[int, Any], None] = profiling.no_profile  # (steps done, state) before each


def initial_state(config, student, extras, optimizer):
  """(graph of what the optimizer trains, its TrainState at step 0) for one run."""
  trainable = layers.set_batch_norm_groups(StudentWithExtras(student, extras),
                                           config.student.bn_group_size)
  trainable_def, params, model_state = nnx.split(trainable, nnx.Param, ...)
  return trainable_def, step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                            model_state=model_state,
                                            opt_state=optimizer.init(params))


class Trainer:
  """One run's state and compiled functions; `run` trains (or resumes) and evaluates.

  `extras` / `frozen` are the method's (Method.extras / Method.frozen).
  """

  def __init__(self, config, feeder, student, teacher, method, mesh, extras=None, frozen=None):
    self.config, self.feeder, self.method, self.mesh = config, feeder, method, mesh
    self.steps_per_epoch = feeder.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.optimizer, self.schedule = step_lib.make_optimizer(config.optim, self.steps_per_epoch,
                                                            config.num_epochs)
    self.replicated = replicated = NamedSharding(mesh, P())

    self.trainable_def, state = initial_state(config, student, extras, self.optimizer)
    self.state = jax.device_put(state, replicated)
    teacher_def, teacher_state = nnx.split(teacher) if teacher is not None else (None, None)
    self.frozen = jax.device_put(step_lib.frozen_inputs(teacher_state, frozen), replicated)
    step = step_lib.make_train_step(
        method=method, feeder=feeder, optimizer=self.optimizer,
        trainable_def=self.trainable_def, teacher_def=teacher_def,
        steps_per_epoch=self.steps_per_epoch, skip_nonfinite=config.skip_nonfinite,
        batch_augment=batch_augment.BatchAugment.from_config(config), seed=config.seed)
    example = feeder.example_train_batch()
    self._metric_shapes = step_lib.metric_shapes(step, self.state, self.frozen, example)
    self.train_step = jax.jit(step, donate_argnums=(0, 1))
    self.step_flops = step_lib.step_flops(self.train_step, self.state, self.init_metric_sums(),
                                          self.frozen, example)
    self.rates = []  # images/s of each log interval of this session
    self.metric = getattr(feeder.info, "metric", "top1")
    self.evaluate = evaluation.create(feeder, self.trainable_def)
    self.evaluate_teacher = teacher and evaluation.create(feeder, teacher_def)
    self.stop_requested = threading.Event()  # set by a signal handler to stop cleanly

  def flops_per_second(self, images_per_second):
    """Achieved FLOP/s of one run at `images_per_second`; None where XLA counts no FLOPs."""
    if not self.step_flops:
      return None
    return images_per_second / self.config.batch_size * self.step_flops

  def init_metric_sums(self):
    """Zero metric sums, placed as the step returns them (no recompilation)."""
    return step_lib.init_metric_sums(self._metric_shapes, self.replicated)

  def train_loop(self, step, stop_at, hooks: Hooks):
    """Steps from global step `step` to `stop_at` (or a stop): the whole loop."""
    log_every = self.config.log_every_steps
    while step < stop_at and not hooks.stop(step):
      epoch = step // self.steps_per_epoch
      end = min((epoch + 1) * self.steps_per_epoch, stop_at)
      batches = self.feeder.train_batches(epoch)
      sums, summed = self.init_metric_sums(), 0
      while step < end and not hooks.stop(step):
        hooks.profile(step, self.state)
        self.state, sums = self.train_step(self.state, sums, self.frozen, next(batches))
        step, summed = step + 1, summed + 1
        if step % log_every == 0 or step == end:
          hooks.log(step, sums, summed)
          sums, summed = self.init_metric_sums(), 0
      if step % self.steps_per_epoch == 0:
        hooks.evaluate(epoch, step)
      hooks.checkpoint(step)
    hooks.profile(step, self.state)
    return step

  def run(self, workdir, max_steps=None) -> RunResult:
    """Trains from the newest checkpoint in `workdir` (or from scratch) to the end.

    Stops early, with a checkpoint (mid-epoch if need be), after global step `max_steps`
    or once `stop_requested` is set (preemption); the result then has `stopped_at`, and
    the same call resumes exactly there.
    """
    self.workdir = workdir
    checkpoints = checkpoint.RunCheckpoints(workdir, self.config.checkpoint_keep)
    writer = MetricWriter(workdir)
    profiler = (profiling.StepProfiler(self.config.profile_steps, workdir)
                if self.config.profile_steps else None)
    try:
      progress = {"best_top1": None, "best_epoch": None, "last_top1": None, "teacher_top1": None}
      if checkpoints.latest_step() is not None:
        self.state, progress, restored_step = checkpoints.restore(
            checkpoint.abstract_like(self.state))
        self.feeder.restore(progress.pop("data_state", None))
        logging.info("resumed from step %d in %s", restored_step, workdir)
      step = int(jax.device_get(self.state.step))
      if self.evaluate_teacher and progress["teacher_top1"] is None:
        teacher_eval = self.evaluate_teacher(self.frozen["teacher"])
        progress["teacher_top1"] = teacher_eval[self.metric]
        logging.info("teacher test %s %.2f%%", self.metric, teacher_eval[self.metric])
        writer.write(step, "teacher_eval", teacher_eval)
      meter = Progress(self.total_steps, self.config.batch_size, step, self.step_flops)
      hooks = Hooks(
          log=lambda step, sums, summed: self._log(writer, meter, step, sums, summed),
          evaluate=lambda epoch, step: self._evaluate_epoch(progress, writer, epoch, step),
          checkpoint=lambda step: checkpoints.save(
              step, self.state, progress | {"data_state": self.feeder.state()}),
          stop=self._stop_agreed, profile=profiler or profiling.no_profile)
      step = self.train_loop(step, min(max_steps or self.total_steps, self.total_steps), hooks)
    finally:
      if profiler:
        profiler.stop()
      checkpoints.close()
      writer.close()
    result = RunResult(progress["best_top1"], progress["best_epoch"], progress["last_top1"],
                       progress["teacher_top1"], self.config.num_epochs, metric=self.metric)
    if self.rates:
      result.images_per_second = float(np.median(self.rates[1:] or self.rates))
      result.step_flops = self.step_flops
      result.flops_per_second = self.flops_per_second(result.images_per_second)
    if step < self.total_steps:
      logging.info("stopped at step %d of %d (epoch %d); rerun the same command to resume",
                   step, self.total_steps, step // self.steps_per_epoch + 1)
      result.stopped_at = step
    return result

  def _log(self, writer, meter, step, sums, summed):
    """Means of the metrics since the last log point; stops a diverged run."""
    sums = jax.device_get(sums)
    first_nonfinite = int(sums.pop(step_lib.FIRST_NONFINITE))
    means = {k: float(v) / summed for k, v in sums.items()}
    if first_nonfinite != step_lib.NEVER and not self.config.skip_nonfinite:
      terms = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
      raise Diverged(f"non-finite loss at step {first_nonfinite + 1} (means over steps "
                     f"{step - summed + 1}-{step}: {terms}); the last good checkpoint "
                     "is kept: lower config.optim.lr or set config.skip_nonfinite=True")
    epoch = (step - 1) // self.steps_per_epoch
    means["images_per_second"] = meter.line(step, epoch, self.config.num_epochs, means)
    self.rates.append(means["images_per_second"])
    if self.step_flops:
      means["flops_per_second"] = self.flops_per_second(means["images_per_second"])
    means["lr"] = float(self.schedule(step - 1))
    if getattr(self.feeder, "skipped_images", 0):  # host-fed data, config.data.bad_images
      means["skipped_images"] = self.feeder.skipped_images
    writer.write(step, "train", means)

  def _stop_agreed(self, step):
    """Whether to stop now (preemption). Multi-host: every host stops at the same step,
    agreed at log points, the only places the hosts compare notes."""
    if jax.process_count() == 1:
      return self.stop_requested.is_set()
    if step % self.config.log_every_steps:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.stop_requested.is_set()))
    return bool(np.any(flags))

  def _evaluate_epoch(self, progress, writer, epoch, step):
    """Test-set evaluation at the end of every `eval_every_epochs`-th epoch and of the
    last; updates best/last in `progress`."""
    last = epoch + 1 == self.config.num_epochs
    if (epoch + 1) % self.config.get("eval_every_epochs", 1) and not last:
      return
    results = self.evaluate(self.state.params, self.state.model_state,
                            output_dir=os.path.join(self.workdir, "eval"))
    value = results[self.metric]
    if progress["best_top1"] is None or value > progress["best_top1"]:
      progress["best_top1"], progress["best_epoch"] = value, epoch + 1
    progress["last_top1"] = value
    writer.write(step, "eval", results | {"epoch": epoch + 1, "best_top1": progress["best_top1"]})
    logging.info("epoch %d/%d  test %s  (best %s %.2f%% at epoch %d)", epoch + 1,
                 self.config.num_epochs, evaluation.describe(results), self.metric,
                 progress["best_top1"], progress["best_epoch"])

  def student(self):
    """The trained student model (without the method's extras)."""
    return nnx.merge(self.trainable_def, self.state.params, self.state.model_state).student


def create_student(config, num_classes):
  """The student as the recipe initialises it (config.student.classifier_init) and trains
  it (config.student.drop_path_rate, compute in config.student.dtype)."""
  return models.create(config.student.model, num_classes, rngs=nnx.Rngs(config.seed),
                       dtype=DTYPES[config.student.dtype],
                       classifier_init=config.student.classifier_init,
                       drop_path_rate=config.student.drop_path_rate,
                       **config.student.get("options", {}))


def _versions():
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  return {name: metadata.version(name) for name in
          ("kd_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")}


def _flat(tree, prefix=""):
  """{'optim.lr': 0.05, ...} of a nested config dict."""
  if isinstance(tree, dict):
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


# How a run uses the machine, not what it computes: a resumed run may change them.
RUNTIME_FIELDS = ("compile_cache_dir", "profile_steps")


def _check_config_matches(config, workdir):
  """A workdir holds one experiment, finished or not: refuse another config, naming the
  fields that differ."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return
  stored = _flat(run_files.read_json(config_path))
  current = _flat(json.loads(config.to_json_best_effort()))
  differ = sorted(key for key in stored.keys() | current.keys()
                  if stored.get(key) != current.get(key) and key not in RUNTIME_FIELDS)
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
    run_files.write_text(config_path, resolved)
    run_files.write_text(os.path.join(workdir, checkpoint.RUN_INFO), json.dumps(
        {"model": config.student.model, "num_classes": num_classes,
         "method": config.method.name, "devices": jax.device_count(),
         "compute_dtype": {"student": config.student.dtype, "teacher": config.teacher.dtype},
         "platform": jax.devices()[0].platform, "versions": _versions()}, indent=2))


SUMMARY_REMEDY = ("delete it and rerun the same command to write it again from the last "
                  "checkpoint, or use --overwrite to start the run again")


def read_summary(path):
  """The RunResult a finished run recorded in summary.json."""
  names = [f.name for f in dataclasses.fields(RunResult)]
  record = run_files.fields(path, run_files.read_json(path, SUMMARY_REMEDY), names[:5],
                            SUMMARY_REMEDY)
  return RunResult(**{name: record[name] for name in names if name in record})


def write_summary(path, result):
  run_files.write_text(path, json.dumps(
      {k: v for k, v in dataclasses.asdict(result).items() if k not in ("stopped_at", "signal")},
      indent=2))


def _train_teacher(config, workdir, loaded):
  """Bootstraps a teacher (smoke runs): a CE run of config.teacher.model in workdir/teacher."""
  path = os.path.join(workdir, "teacher")
  logging.info("training the teacher %s for %d epochs in %s", config.teacher.model,
               config.teacher.train_epochs, path)
  train_and_evaluate(validate.teacher_bootstrap_config(config), path, loaded)
  return path


def _cache(teacher_path, info, workdir, input_norm="data"):
  """Setup.cached: results keyed by (teacher, dataset, the teacher's input normalisation
  when it is not the data's), kept beside the teacher checkpoint (or in the workdir when
  that place is read-only), recomputed when the shape differs or the file is damaged."""
  norm_key = "" if input_norm == "data" else f".{input_norm}_input"

  def cached(name, shape, compute):
    filename = f"{name}.{info.cache_key}{norm_key}.npy"
    beside = (os.path.join(teacher_path, filename) if os.path.isdir(teacher_path)
              else f"{teacher_path}.{filename}")
    places = [beside, os.path.join(workdir, filename)]
    for path in places:
      value = run_files.load_cache(path) if os.path.exists(path) else None
      if value is not None and value.shape == tuple(shape):
        logging.info("%s from %s", name, path)
        return value
    logging.info("computing %s (once per teacher and dataset)", name)
    value = np.asarray(compute())
    for path in places:
      try:
        run_files.save_cache(path, value)
        break
      except OSError:
        continue
    return value

  return cached


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, loaded=None,
                       max_steps=None, overwrite=False) -> RunResult:
  """Runs (or resumes, or reports the finished) experiment `config` in `workdir`.

  `loaded` (kd_jax.data.feeders.load's data) skips loading (tests, the smoke teacher);
  `max_steps` stops early with a resumable checkpoint (see Trainer.run); `overwrite`
  deletes a workdir that holds a run of another config instead of refusing it. A run
  stopped by SIGTERM/SIGINT returns with `stopped_at` and `signal` set.
  """
  method = validate.check(config)
  compile_cache.enable(config.compile_cache_dir)
  if "://" in workdir:
    raise UserError(f"--workdir={workdir}: remote URLs are not supported; mount the bucket "
                    "(e.g. gcsfuse) and pass the mount path")
  workdir = os.path.abspath(workdir)
  if overwrite and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  _check_config_matches(config, workdir)
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    summary = read_summary(summary_path)
    logging.info("%s is complete: best %s %.2f%%, last %.2f%%", workdir, summary.metric,
                 summary.best_top1, summary.last_top1)
    return summary
  if loaded is None:
    loaded = feeders.load(config)
  # Everything that can be wrong with the inputs fails here, before the workdir is touched.
  teacher, teacher_path = None, config.teacher.checkpoint
  if method.needs_teacher and teacher_path:
    teacher = checkpoint.load_teacher(teacher_path, config.teacher.model, loaded.num_classes,
                                      dtype=DTYPES[config.teacher.dtype],
                                      options=dict(config.teacher.get("options", {})))
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise UserError(f"cannot create --workdir={workdir}: {error.strerror}") from None
  with guards.workdir_lock(workdir):
    return _run_locked(config, workdir, loaded, method, teacher, teacher_path, max_steps)


def _run_locked(config, workdir, loaded, method, teacher, teacher_path, max_steps):
  """The part of train_and_evaluate that writes into the (locked) workdir."""
  _record_run(config, workdir, loaded.num_classes)
  if method.needs_teacher and teacher is None:
    teacher_path = _train_teacher(config, workdir, loaded)
    teacher = checkpoint.load_teacher(teacher_path, config.teacher.model, loaded.num_classes,
                                      dtype=DTYPES[config.teacher.dtype],
                                      options=dict(config.teacher.get("options", {})))
  mesh = data_mesh()
  feeder = feeders.create(config, mesh, loaded)
  input_norm = config.teacher.get("input_norm", "data")
  if teacher is not None:  # the teacher's own input normalisation, inside the same jit
    teacher = models.with_input_norm(teacher, feeder.info.mean, feeder.info.std, input_norm)
  student = create_student(config, feeder.info.num_classes)
  setup = Setup(student, teacher, feeder, nnx.Rngs(config.seed + 1),
                _cache(teacher_path, feeder.info, workdir, input_norm))
  trainer = Trainer(config, feeder, student, teacher, method, mesh, method.extras(setup),
                    method.frozen(setup))
  start = time.perf_counter()
  with guards.stop_on_signals(trainer) as signals:
    result = trainer.run(workdir, max_steps)
  if not result.finished:
    result.signal = signals[0] if signals else None
    return result
  checkpoint.save_final_student(trainer.student(), workdir)
  result.seconds_this_session = time.perf_counter() - start
  if jax.process_index() == 0:
    write_summary(os.path.join(workdir, "summary.json"), result)
  logging.info("done: best %s %.2f%% (epoch %d), last %.2f%%", result.metric,
               result.best_top1, result.best_epoch, result.last_top1)
  return result
