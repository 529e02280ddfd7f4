"""Seeds in one program: N independent runs of one config, one compiled step (issue #19).

Every number of a KD paper is a mean over seeds, and a CIFAR student leaves a device
mostly idle. Here the pure step (kd_jax.step, unchanged) is mapped over a leading seed
axis of the train state, the metric sums and each seed's batch order and augmentation
seed, while the dataset and the frozen teacher are shared (one copy per device). So each
seed has its own initialisation, data order, augmentation, method state (a CRD memory
bank) and optimizer state, and batch-level losses and BatchNorm see that seed's batch
only. A method's frozen extras are shared when every seed computed the same (ND's class
means, cached per teacher), else per seed; smoke runs train one teacher per seed, as each
seed alone would, and those teachers are then per seed too.

A ('seed', 'data') mesh lays the seeds over the devices first: the seed axis has
gcd(seeds, devices) devices (shard_map, manual over 'seed'), the other devices split each
seed's batch as they split a single run's ('data' stays automatic). 5 seeds on 4
devices: 1 x 4, each batch over the 4 devices; 4 seeds on 8 devices: 4 x 2; 8 seeds on 4
devices: 4 x 1, two seeds per device. A device runs its own seeds with jax.vmap on GPUs
and TPUs (bigger kernels) and one after another on CPUs (default_within_device).

Each seed writes its own workdir exactly as a run of that seed alone (config.json,
metrics.jsonl, checkpoints, final_student, summary.json), so `summarize`, `plots`, either
kind of resume, and a single-seed run continuing a seed's workdir all work. The numbers
are those of the seed alone up to float rounding (tests/test_seeds.py says why bits
differ). Only device-resident (CIFAR-sized) datasets are supported.
"""
import contextlib
import dataclasses
import math
import os
import shutil
import threading
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from kd_jax import checkpoint, compile_cache, evaluation, guards, train, validate
from kd_jax import step as step_lib
from kd_jax.data import batch_augment, feeders
from kd_jax.errors import UserError
from kd_jax.methods import Setup
from kd_jax.metrics import MetricWriter, Progress

GIB = 2**30


def seeds_mesh(num_seeds, devices=None):
  """A ('seed', 'data') mesh: gcd(num_seeds, devices) devices on the seed axis."""
  devices = jax.devices() if devices is None else devices
  seed_axis = math.gcd(num_seeds, len(devices))
  auto = jax.sharding.AxisType.Auto
  return jax.sharding.Mesh(np.asarray(devices).reshape(seed_axis, -1), ("seed", "data"),
                           axis_types=(auto, auto))


def stack(trees):
  """One pytree with a leading seed axis from one pytree per seed."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    return False
  unwrap = lambda x: (jax.random.key_data(x) if jax.dtypes.issubdtype(  # pylint: disable=g-long-lambda
      getattr(x, "dtype", None), jax.dtypes.prng_key) else x)
  return all(np.array_equal(unwrap(x), unwrap(y)) for x, y in zip(leaves_a, leaves_b))


def shared_or_stacked(values):
  """(value, vmap axis): the one value when every seed's is equal (shared: None), else
  the seeds' values stacked (axis 0)."""
  if all(_equal(values[0], value) for value in values[1:]):
    return values[0], None
  return stack(values), 0


def default_within_device(device):
  """How a device runs its several seeds: 'vmap' (one batched program: bigger kernels,
  what a GPU or TPU wants) or 'loop' (one seed after another in the same program). XLA's
  CPU backend lowers a vmapped convolution (grouped by seed) to a far slower kernel than
  the plain one, so CPUs loop."""
  return "loop" if device.platform == "cpu" else "vmap"


def over_seeds(fn, mesh, in_axes, within):
  """`fn` of one seed's arguments -> the same over all seeds: arguments whose `in_axes`
  (a prefix tree of the arguments) is 0 carry a leading seed axis, None ones are shared;
  every output gets the seed axis. The seed axis is laid over the mesh's 'seed' axis
  (shard_map, manual), each device runs its own seeds `within` ('vmap' or 'loop'), and
  the mesh's 'data' axis stays automatic: each seed's batch is split as in a single run."""
  is_axis = lambda x: x is None
  specs = jax.tree.map(lambda axis: P() if axis is None else P("seed"), in_axes,
                       is_leaf=is_axis)

  def local(*args):
    if within == "vmap":
      return jax.vmap(fn, in_axes=in_axes)(*args)
    mapped = [leaf for axis, sub in zip(jax.tree.leaves(in_axes, is_leaf=is_axis),
                                        _subtrees(in_axes, args))
              if axis is not None for leaf in jax.tree.leaves(sub)]
    take = lambda i: jax.tree.map(  # pylint: disable=g-long-lambda
        lambda axis, sub: sub if axis is None else jax.tree.map(lambda x: x[i], sub),
        in_axes, args, is_leaf=is_axis)
    return stack([fn(*take(i)) for i in range(mapped[0].shape[0])])

  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P("seed"),
                       axis_names={"seed"})


def _subtrees(prefix, tree):
  """The subtrees of `tree` at the leaves of its prefix tree `prefix` (None leaves too)."""
  found = []
  jax.tree.map(lambda _, sub: found.append(sub), prefix, tree, is_leaf=lambda x: x is None)
  return found


def device_memory_limit(device):
  """Bytes the device lets a program use, where the platform says (GPU, TPU); else None."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # platforms without the query
    return None
  return (stats or {}).get("bytes_limit")


@dataclasses.dataclass
class StepMemory:
  """What the compiled step needs on each device (XLA's memory analysis)."""
  per_device: int  # arguments + outputs - donated + temporaries
  shared: int  # the dataset and what all seeds share (teacher), one copy per device
  seeds_per_device: int

  @property
  def per_seed(self):
    return (self.per_device - self.shared) / self.seeds_per_device

  def seeds_that_fit(self, limit, seed_axis):
    return int((limit - self.shared) // max(self.per_seed, 1)) * seed_axis


def step_memory(compiled, shared_bytes, seeds_per_device):
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  need = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
  return StepMemory(int(need), int(shared_bytes), seeds_per_device)


def check_fits(memory, limit, num_seeds, seed_axis, device_kind, num_devices):
  """More seeds than the devices hold (`limit` bytes each, None: unknown): one line that
  says how many fit."""
  if limit is None or memory is None or memory.per_device <= limit:
    return
  fits = memory.seeds_that_fit(limit, seed_axis)
  raise UserError(
      f"--seeds: {num_seeds} seeds need about {memory.per_device / GIB:.1f} GiB on each "
      f"device ({memory.per_seed / GIB:.2f} GiB per seed + {memory.shared / GIB:.2f} GiB "
      f"shared) but a {device_kind} has {limit / GIB:.1f} GiB: about {fits} fit on these "
      f"{num_devices} devices; pass at most {fits} seeds")


def _bytes(tree):
  return sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))


class _SeedsBatches:
  """What Trainer.train_loop asks of a feeder, for all seeds at once."""

  def __init__(self, feeder, seeds, sharding):
    self.info, self.steps_per_epoch = feeder.info, feeder.steps_per_epoch
    self._feeder = feeder
    self._seeds = jax.device_put(np.asarray(seeds, np.int32), sharding)

  def train_batches(self, epoch):
    return self._feeder.seeds_train_batches(epoch, self._seeds)

  def state(self):
    return None  # each seed's order is a function of (seed, epoch)


class SeedsTrainer(train.Trainer):
  """A Trainer whose state, metric sums and batches carry a leading seed axis.

  `students`, `teachers`, `extras`, `frozen`: one per seed (the same teacher object for
  all when it is shared). Trainer.train_loop drives it unchanged; `run` takes one
  workdir per seed and returns one RunResult per seed. `within_device`: how a device runs
  its several seeds, 'vmap' or 'loop' (default_within_device).
  """

  def __init__(self, config, seeds, feeder, students, teachers, method, mesh, extras, frozen,
               within_device=None):
    self.config, self.method, self.mesh, self.seeds = config, method, mesh, list(seeds)
    self.steps_per_epoch = feeder.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.optimizer, self.schedule = step_lib.make_optimizer(config.optim, self.steps_per_epoch,
                                                            config.num_epochs)
    self.replicated = NamedSharding(mesh, P())
    self.per_seed = NamedSharding(mesh, P("seed"))
    self.feeder = _SeedsBatches(feeder, seeds, self.per_seed)

    states = []
    for student, extra in zip(students, extras):
      self.trainable_def, state = train.initial_state(config, student, extra, self.optimizer)
      states.append(state)
    self.state = jax.device_put(stack(states), self.per_seed)
    has_teacher = teachers[0] is not None
    teacher_def = nnx.graphdef(teachers[0]) if has_teacher else None
    if all(teacher is teachers[0] for teacher in teachers):
      teacher_state, teacher_axis = nnx.state(teachers[0]) if has_teacher else None, None
    else:
      teacher_state, teacher_axis = stack([nnx.state(teacher) for teacher in teachers]), 0
    frozen_extras, extras_axis = shared_or_stacked(frozen)
    place = lambda tree, axis: jax.device_put(  # pylint: disable=g-long-lambda
        tree, self.replicated if axis is None else self.per_seed)
    self.frozen = step_lib.frozen_inputs(place(teacher_state, teacher_axis),
                                         place(frozen_extras, extras_axis))
    frozen_axes = step_lib.frozen_inputs(teacher_axis, extras_axis)
    step = step_lib.make_train_step(
        method=method, feeder=feeder, optimizer=self.optimizer,
        trainable_def=self.trainable_def, teacher_def=teacher_def,
        steps_per_epoch=self.steps_per_epoch, skip_nonfinite=config.skip_nonfinite,
        batch_augment=batch_augment.BatchAugment.from_config(config), seed=config.seed)
    self.within_device = within_device or default_within_device(mesh.devices.flat[0])
    seeds_step = over_seeds(step, mesh, (0, 0, frozen_axes, feeder.SEEDS_BATCH_AXES),
                            self.within_device)
    batch = next(self.feeder.train_batches(0))
    self._metric_shapes = step_lib.metric_shapes(seeds_step, self.state, self.frozen, batch)
    lowered = jax.jit(seeds_step, donate_argnums=(0, 1), out_shardings=self.per_seed).lower(
        self.state, self.init_metric_sums(), self.frozen, batch)
    flops = step_lib.lowered_flops(lowered)  # of all seeds' step; a run reports one seed's
    self.step_flops = flops / len(self.seeds) if flops else None
    self.train_step = lowered.compile()
    shared = _bytes({key: value for key, value in batch.items()
                     if feeder.SEEDS_BATCH_AXES[key] is None})
    shared += _bytes([tree for tree, axis in ((teacher_state, teacher_axis),
                                              (frozen_extras, extras_axis)) if axis is None])
    seed_axis = mesh.shape["seed"]
    self.memory = step_memory(self.train_step, shared, len(self.seeds) // seed_axis)
    device = mesh.devices.flat[0]
    check_fits(self.memory, device_memory_limit(device), len(self.seeds), seed_axis,
               device.device_kind, mesh.size)
    variables_over_seeds = lambda fn: over_seeds(fn, mesh, (0, None, None, None),  # pylint: disable=g-long-lambda
                                                 self.within_device)
    self.evaluate = evaluation.Evaluator(feeder, self.trainable_def, variables_over_seeds)
    self.evaluate_teacher = has_teacher and evaluation.Evaluator(
        feeder, teacher_def, None if teacher_axis is None else variables_over_seeds)
    self._take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree),
                         out_shardings=self.replicated)
    self.stop_requested = threading.Event()

  def init_metric_sums(self):
    return step_lib.init_metric_sums(self._metric_shapes, self.per_seed)

  def seed_state(self, index):
    """The train state of seed number `index` (replicated, as a single run holds it)."""
    return self._take(self.state, index)

  def student(self, index=0):
    state = self.seed_state(index)
    return nnx.merge(self.trainable_def, state.params, state.model_state).student

  def run(self, workdirs, max_steps=None):
    """Trains every seed from its newest checkpoint (all at the same step) or from
    scratch; returns one RunResult per seed (see Trainer.run)."""
    checkpoints = [checkpoint.RunCheckpoints(w, self.config.checkpoint_keep) for w in workdirs]
    writers = [MetricWriter(w) for w in workdirs]
    try:
      progress = [{"best_top1": None, "best_epoch": None, "last_top1": None,
                   "teacher_top1": None} for _ in workdirs]
      latest = [c.latest_step() for c in checkpoints]
      if any(step is not None for step in latest):
        self._restore(checkpoints, latest, progress)
      step = int(jax.device_get(self.state.step[0]))
      if self.evaluate_teacher and progress[0]["teacher_top1"] is None:
        results = self.evaluate_teacher(self.frozen["teacher"])
        for seed_progress, writer, result in zip(progress, writers, self._per_seed(results)):
          seed_progress["teacher_top1"] = result["top1"]
          writer.write(step, "teacher_eval", result)
      meter = Progress(self.total_steps, self.config.batch_size * len(self.seeds), step)
      hooks = train.Hooks(
          log=lambda step, sums, summed: self._log_seeds(writers, meter, step, sums, summed),
          evaluate=lambda epoch, step: self._evaluate_seeds(progress, writers, epoch, step),
          checkpoint=lambda step: [c.save(step, self.seed_state(i), p | {"data_state": None})
                                   for i, (c, p) in enumerate(zip(checkpoints, progress))],
          stop=self._stop_agreed)
      step = self.train_loop(step, min(max_steps or self.total_steps, self.total_steps), hooks)
    finally:
      for c in checkpoints:
        c.close()
      for writer in writers:
        writer.close()
    results = [train.RunResult(p["best_top1"], p["best_epoch"], p["last_top1"],
                               p["teacher_top1"], self.config.num_epochs) for p in progress]
    if step < self.total_steps:
      logging.info("stopped at step %d of %d (epoch %d); rerun the same command to resume",
                   step, self.total_steps, step // self.steps_per_epoch + 1)
      for result in results:
        result.stopped_at = step
    return results

  def _restore(self, checkpoints, latest, progress):
    if len(set(latest)) > 1:
      steps = ", ".join(f"seed {seed}: {'none' if step is None else f'step {step}'}"
                        for seed, step in zip(self.seeds, latest))
      raise UserError(f"--seeds: the seeds' checkpoints are at different steps ({steps}); "
                      "resume them one at a time (--config.seed=N) or in groups at one step")
    abstract = checkpoint.abstract_like(self.seed_state(0))
    at_most = None
    while True:  # the newest step intact for every seed (a damaged one sets all back)
      restored = [c.restore(abstract, at_most) for c in checkpoints]
      steps = {step for _, _, step in restored}
      if len(steps) == 1:
        break
      at_most = min(steps)
    for i, (_, seed_progress, _) in enumerate(restored):
      seed_progress.pop("data_state", None)
      progress[i] = seed_progress
    self.state = jax.device_put(stack([state for state, _, _ in restored]), self.per_seed)
    logging.info("resumed %d seeds from step %d", len(restored), steps.pop())

  def _per_seed(self, results):
    return [results] * len(self.seeds) if isinstance(results, dict) else results

  def _log_seeds(self, writers, meter, step, sums, summed):
    """Each seed's means since the last log point into its own metrics; one progress line
    (means over the seeds, images/s of all seeds); stops when a seed diverged."""
    sums = jax.device_get(sums)
    first_nonfinite = sums.pop(step_lib.FIRST_NONFINITE)
    means = [{k: float(v[i]) / summed for k, v in sums.items()} for i in range(len(self.seeds))]
    for seed, first, seed_means in zip(self.seeds, first_nonfinite, means):
      if first != step_lib.NEVER and not self.config.skip_nonfinite:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in seed_means.items())
        raise train.Diverged(
            f"seed {seed}: non-finite loss at step {int(first) + 1} (means over steps "
            f"{step - summed + 1}-{step}: {terms}); the last good checkpoints are kept: lower "
            "config.optim.lr or set config.skip_nonfinite=True")
    epoch = (step - 1) // self.steps_per_epoch
    over_seeds = {k: float(np.mean([m[k] for m in means])) for k in means[0]}
    images_per_second = meter.line(step, epoch, self.config.num_epochs, over_seeds)
    for writer, seed_means in zip(writers, means):
      seed_means["images_per_second"] = images_per_second / len(self.seeds)
      if self.step_flops:
        seed_means["flops_per_second"] = self.flops_per_second(seed_means["images_per_second"])
      seed_means["lr"] = float(self.schedule(step - 1))
      writer.write(step, "train", seed_means)

  def _evaluate_seeds(self, progress, writers, epoch, step):
    results = self.evaluate(self.state.params, self.state.model_state)
    for seed, seed_progress, writer, result in zip(self.seeds, progress, writers, results):
      if seed_progress["best_top1"] is None or result["top1"] > seed_progress["best_top1"]:
        seed_progress["best_top1"], seed_progress["best_epoch"] = result["top1"], epoch + 1
      seed_progress["last_top1"] = result["top1"]
      writer.write(step, "eval", result | {"epoch": epoch + 1,
                                          "best_top1": seed_progress["best_top1"]})
      logging.info("seed %d: epoch %d/%d  test top-1 %.2f%%  top-5 %.2f%%  (best %.2f%% at "
                   "epoch %d)", seed, epoch + 1, self.config.num_epochs, result["top1"],
                   result["top5"], seed_progress["best_top1"], seed_progress["best_epoch"])


def _with_seed(config, seed):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
  return config


def train_and_evaluate_seeds(config, seeds, workdirs, loaded=None, max_steps=None,
                             overwrite=False, devices=None):
  """train.train_and_evaluate of `config` for each seed (its workdir in `workdirs`), the
  unfinished seeds trained together in one program over `devices` (default: all).
  Returns one RunResult per seed, in order."""
  seeds = [int(seed) for seed in seeds]
  if len(set(seeds)) != len(seeds) or len(workdirs) != len(seeds):
    raise UserError(f"--seeds={','.join(map(str, seeds))}: each seed once, one workdir each")
  configs = [_with_seed(config, seed) for seed in seeds]
  if len(seeds) == 1:
    return [train.train_and_evaluate(configs[0], workdirs[0], loaded, max_steps, overwrite)]
  method = validate.check(config)
  compile_cache.enable(config.compile_cache_dir)
  if config.profile_steps:
    logging.warning("config.profile_steps is for single runs (--config.seed=N): seeds "
                    "trained together are not profiled")
  for seed_config in configs:
    validate.check(seed_config)
  if feeders.DATASETS.get(config.data.dataset, (None, None))[1] is not feeders.DeviceFeeder:
    raise UserError(f"--seeds: {config.data.dataset} is fed from the host, where several "
                    "seeds in one program are not supported; run one seed at a time "
                    "(--config.seed=N)")
  if any("://" in w for w in workdirs):
    raise UserError("--workdir: remote URLs are not supported; mount the bucket (e.g. "
                    "gcsfuse) and pass the mount path")
  workdirs = [os.path.abspath(w) for w in workdirs]
  results, pending = {}, []
  for index, (seed_config, workdir) in enumerate(zip(configs, workdirs)):
    if overwrite and os.path.isdir(workdir):
      shutil.rmtree(workdir)
    train._check_config_matches(seed_config, workdir)  # pylint: disable=protected-access
    summary_path = os.path.join(workdir, "summary.json")
    if os.path.exists(summary_path):
      results[index] = train.read_summary(summary_path)
      logging.info("%s is complete", workdir)
    else:
      pending.append(index)
  if len(pending) == 1:
    index = pending[0]
    results[index] = train.train_and_evaluate(configs[index], workdirs[index], loaded,
                                              max_steps)
  elif pending:
    if loaded is None:
      loaded = feeders.load(config)
    teacher = None
    if method.needs_teacher and config.teacher.checkpoint:
      teacher = checkpoint.load_teacher(config.teacher.checkpoint, config.teacher.model,
                                        loaded.num_classes, dtype=train.DTYPES[config.teacher.dtype])
    for index in pending:
      try:
        os.makedirs(workdirs[index], exist_ok=True)
      except OSError as error:
        raise UserError(f"cannot create --workdir={workdirs[index]}: {error.strerror}") from None
    with contextlib.ExitStack() as locks:
      for index in pending:
        locks.enter_context(guards.workdir_lock(workdirs[index]))
      ran = _run_locked([configs[i] for i in pending], [workdirs[i] for i in pending], loaded,
                        method, teacher, max_steps, devices)
    results.update(zip(pending, ran))
  return [results[index] for index in range(len(seeds))]


def _run_locked(configs, workdirs, loaded, method, teacher, max_steps, devices):
  """The part of train_and_evaluate_seeds that writes into the (locked) workdirs."""
  seeds = [c.seed for c in configs]
  for seed_config, workdir in zip(configs, workdirs):
    train._record_run(seed_config, workdir, loaded.num_classes)  # pylint: disable=protected-access
  teachers = [teacher] * len(seeds)
  teacher_paths = [configs[0].teacher.checkpoint] * len(seeds)
  if method.needs_teacher and teacher is None:  # smoke: each seed's own teacher, as alone
    teacher_paths = [os.path.join(w, "teacher") for w in workdirs]
    logging.info("training the teachers of seeds %s in <workdir>/teacher", seeds)
    train_and_evaluate_seeds(validate.teacher_bootstrap_config(configs[0]), seeds,
                             teacher_paths, loaded, devices=devices)
    teachers = [checkpoint.load_teacher(path, configs[0].teacher.model, loaded.num_classes,
                                        dtype=train.DTYPES[configs[0].teacher.dtype])
                for path in teacher_paths]
  mesh = seeds_mesh(len(seeds), devices)
  feeder = feeders.create(configs[0], mesh, loaded)
  students, extras, frozen = [], [], []
  for seed_config, teacher_, teacher_path, workdir in zip(configs, teachers, teacher_paths,
                                                          workdirs):
    student = train.create_student(seed_config, feeder.info.num_classes)
    setup = Setup(student, teacher_, feeder.for_seed(seed_config.seed),
                  nnx.Rngs(seed_config.seed + 1),
                  train._cache(teacher_path, feeder.info, workdir))  # pylint: disable=protected-access
    students.append(student)
    extras.append(method.extras(setup))
    frozen.append(method.frozen(setup))
  trainer = SeedsTrainer(configs[0], seeds, feeder, students, teachers, method, mesh, extras,
                         frozen)
  if trainer.memory is not None:
    logging.info("%d seeds in one program over %s: %.1f MiB per device, %.1f MiB per seed",
                 len(seeds), dict(mesh.shape), trainer.memory.per_device / 2**20,
                 trainer.memory.per_seed / 2**20)
  start = time.perf_counter()
  with guards.stop_on_signals(trainer) as signals:
    results = trainer.run(workdirs, max_steps)
  if not results[0].finished:
    for result in results:
      result.signal = signals[0] if signals else None
    return results
  seconds = time.perf_counter() - start
  for index, (result, workdir) in enumerate(zip(results, workdirs)):
    checkpoint.save_final_student(trainer.student(index), workdir)
    result.seconds_this_session = seconds  # the program's time, shared by its seeds
    if jax.process_index() == 0:
      train.write_summary(os.path.join(workdir, "summary.json"), result)
    logging.info("seed %d done: best top-1 %.2f%% (epoch %d), last %.2f%%", seeds[index],
                 result.best_top1, result.best_epoch, result.last_top1)
  return results
