"""Throughput of kd_jax training: the bare jitted step, the full loop, and PyTorch.

  python -m benchmarks.train_step --pair res56_res20 --method kd --batch-size 64 \
      [--steps 4] [--repeats 3] [--mode step|loop|both] [--teacher-dtype float32|bfloat16]
      [--student-dtype float32|bfloat16]
      [--compare-torch] [--flops] [--variants='default;--xla_cpu_multi_thread_eigen=false']

Prints one JSON line per measurement (`kind` 'measurement'), then ratio lines (`kind`
'ratio'). --pair, --method and --teacher-dtype take comma-separated lists; all the
variants (and the PyTorch step with --compare-torch) are built in one process and timed
in alternating blocks, each number the median over --repeats blocks. Methods without a
kd_jax method or a configs/cifar_<method>.py are skipped with a note (ND methods, e.g.
kd_nd, come from configs/cifar_nd.py).

Modes: 'step' runs `Trainer.train_step` on device-resident data (a DeviceFeeder), --steps steps per
timed block, waiting only at the end of a block. 'loop' runs `Trainer.run` for one
whole (synthetic, shortened) epoch of --loop-steps steps per block: logging about 4
times an epoch as the real recipe does (every 200 of 782 steps), then a test-set
evaluation (10,000 test images per 782 steps, the real proportion, in the recipe's eval
batches) and an Orbax checkpoint. Its time starts at the epoch's first step (after the
checkpoint restore that starts every `run` call) and ends when `run` returns;
compilation is done beforehand.
compile_s is the wall time of the first call of the step (compilation + one step).
--variants runs this command once per variant in subprocesses, alternating, to compare
settings that must be fixed before JAX starts: tokens starting with --xla go into
XLA_FLAGS, others (e.g. --cpu-devices=2) are passed to the child.
"""
import argparse
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import benchmarks

CIFAR_TRAIN, CIFAR_TEST, REAL_EPOCHS = 50000, 10000, 240
REAL_LOG_EVERY, REAL_STEPS_PER_EPOCH = 200, 782  # the recipe's logging at batch 64


def _start_jax(cpu_devices=0):
  """Imports JAX here, not at the top, so --cpu-devices is set before its backend starts."""
  import jax  # pylint: disable=g-import-not-at-top
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", cpu_devices)


def jax_info():
  """Device and versions of the JAX side."""
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  kind = device.device_kind if device.platform != "cpu" else benchmarks.cpu_model()
  return {"framework": "kd_jax", "device": kind, "device_kind": device.device_kind,
          "platform": device.platform,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "jaxlib": metadata.version("jaxlib"), "flax": metadata.version("flax")}


def method_config(pair, method):
  """The CIFAR config of `method` for `pair`, or None if kd_jax has no such method."""
  from kd_jax import methods  # pylint: disable=g-import-not-at-top
  if method not in methods.METHODS:
    return None
  nd_base = method.endswith("_nd")  # configs/cifar_nd.py takes 'kd_nd,PAIR' etc.
  try:
    module = importlib.import_module("configs.cifar_nd" if nd_base else f"configs.cifar_{method}")
  except ImportError:
    return None
  teacher, student = benchmarks.resolve_pair(pair)
  known_pair = pair if pair in module.cifar_common.PAIRS else next(iter(module.cifar_common.PAIRS))
  if method == "ce":  # configs/cifar_ce.py takes a model name
    config = module.get_config(student)
  else:
    config = module.get_config(f"{method},{known_pair}" if nd_base else known_pair)
  config.teacher.model, config.student.model = teacher, student
  return config


class Variant:
  """One (pair, method, teacher dtype): its Trainer with a random-weight teacher."""

  def __init__(self, pair, method, teacher_dtype, batch_size, dataset, loop_steps,
               student_dtype="float32"):
    import jax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from kd_jax import methods, models, train  # pylint: disable=g-import-not-at-top
    from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
    config = method_config(pair, method)
    config.batch_size = batch_size
    config.teacher.checkpoint, config.teacher.dtype = "", teacher_dtype
    config.student.dtype = student_dtype
    devices = len(jax.devices())  # the recipe's eval batch, at most the test set, split evenly
    per_device = -(-min(config.eval_batch_size, len(dataset.test_labels)) // devices)
    config.eval_batch_size = per_device * devices
    config.log_every_steps = max(1, loop_steps * REAL_LOG_EVERY // REAL_STEPS_PER_EPOCH)
    self.config, self.pair, self.method_name = config, pair, method
    self.method = methods.create(config.method)
    self.teacher_dtype = teacher_dtype if self.method.needs_teacher else None
    student = train.create_student(config, dataset.num_classes)
    teacher = None
    if self.method.needs_teacher:
      teacher = models.create(config.teacher.model, dataset.num_classes, rngs=nnx.Rngs(1),
                              dtype=train.DTYPES[teacher_dtype])
    mesh = train.data_mesh()
    feeder = feeders.DeviceFeeder(dataset, config, mesh)
    # Random frozen extras (ND's class means): speed only, no pass over the data.
    setup = methods.Setup(student, teacher, feeder, nnx.Rngs(2), cached=lambda name, shape, _: (
        jax.random.uniform(jax.random.key(3), shape)))
    self.trainer = train.Trainer(config, feeder, student, teacher, self.method, mesh,
                                 self.method.extras(setup), self.method.frozen(setup))
    self.record = {"pair": pair, "method": method, "batch_size": batch_size,
                   "teacher_dtype": self.teacher_dtype, "student_dtype": student_dtype,
                   "teacher": config.teacher.model if teacher else None,
                   "student": config.student.model}

  def step_args(self, batch, sums=None):
    """The arguments of `Trainer.train_step`; fresh zero metric sums unless given."""
    t = self.trainer
    return (t.state, t.init_metric_sums() if sums is None else sums, t.frozen, batch)


class StepBench:
  """The bare jitted train step, `steps` per timed block."""

  def __init__(self, variant, steps):
    self.variant, self.steps = variant, steps
    self.batch = variant.trainer.feeder.example_train_batch()
    self.sums = None
    self.record = {**variant.record, "mode": "step"}

  def _run(self, steps):
    import jax  # pylint: disable=g-import-not-at-top
    trainer = self.variant.trainer
    state, sums, *rest = self.variant.step_args(self.batch, self.sums)
    start = time.perf_counter()
    for _ in range(steps):
      state, sums = trainer.train_step(state, sums, *rest)
    jax.block_until_ready((state, sums))
    seconds = time.perf_counter() - start
    trainer.state, self.sums = state, sums
    return seconds

  def warmup(self):
    """Compiles (the first call's time, one step included) and runs two more steps.

    The second call's time is kept too: it shows whether the step compiled again.
    """
    first = self._run(1)
    self.second_call_s = self._run(1)
    self._run(1)
    return first

  def time_block(self):
    return self._run(self.steps), self.steps


class LoopBench:
  """`Trainer.run` for one whole epoch per timed block (steps, logs, eval, checkpoint)."""

  def __init__(self, variant, workdir):
    self.variant, self.workdir = variant, workdir
    trainer = variant.trainer
    self.steps = trainer.steps_per_epoch
    self.done = 0
    self.eval_seconds = []  # test-set evaluation time of each epoch
    self.record = {**variant.record, "mode": "loop", "steps_per_epoch": self.steps,
                   "eval_images": trainer.feeder.info.num_test,
                   "log_every_steps": variant.config.log_every_steps}

  def _run_epoch(self):
    """Runs to the next epoch end; returns seconds from the epoch's first step."""
    trainer = self.variant.trainer
    step_fn, start = trainer.train_step, []

    def first_call_timer(*args):
      if not start:
        start.append(time.perf_counter())
      return step_fn(*args)

    evaluate_fn = trainer.evaluate

    def timed_evaluate(*args):
      eval_start = time.perf_counter()
      results = evaluate_fn(*args)
      self.eval_seconds.append(time.perf_counter() - eval_start)
      return results

    target = (self.done // self.steps + 1) * self.steps
    trainer.train_step, trainer.evaluate = first_call_timer, timed_evaluate
    try:
      result = trainer.run(self.workdir, max_steps=target)
    finally:
      trainer.train_step, trainer.evaluate = step_fn, evaluate_fn
    seconds = time.perf_counter() - start[0]
    assert result.stopped_at == target, result
    self.done = target
    return seconds

  def warmup(self):
    """One untimed (partial) epoch: compiles the evaluations, writes the first checkpoint."""
    import jax  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    self.done = int(jax.device_get(self.variant.trainer.state.step))
    self._run_epoch()
    self.eval_seconds.clear()
    return time.perf_counter() - start

  def time_block(self):
    return self._run_epoch(), self.steps


def _cache_sizes(variant):
  """Entries in the jit caches of the train and eval steps (grows when they compile)."""
  trainer = variant.trainer
  return tuple(getattr(f, "_cache_size", lambda: None)()
               for f in (trainer.train_step, trainer.evaluate.batch_sums))


def flops_records(variants, batch_size):
  """FLOPs per image from XLA's cost analysis of compiled forwards and train steps."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top

  def flops(compiled):
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis["flops"])

  forward_cache = {}

  def forward(name):
    if name not in forward_cache:
      graphdef, state = nnx.split(models.create(name, 100, rngs=nnx.Rngs(0)))
      fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
      x = jnp.zeros((batch_size, 32, 32, 3), jnp.float32)
      forward_cache[name] = flops(fn.lower(state, x).compile()) / batch_size
    return forward_cache[name]

  records = []
  for v in variants:
    step = v.trainer.train_step.lower(*v.step_args(v.trainer.feeder.example_train_batch())).compile()
    teacher = forward(v.config.teacher.model) if v.method.needs_teacher else 0.0
    student = forward(v.config.student.model)
    records.append({
        "kind": "flops", **v.record, "teacher_forward_mflops": round(teacher / 1e6, 2),
        "student_forward_mflops": round(student / 1e6, 2),
        "estimate_mflops": round((teacher + 3 * student) / 1e6, 2),
        "step_mflops_per_image": round(flops(step) / batch_size / 1e6, 2),
        "how": "jax.jit(f).lower(...).compile().cost_analysis()['flops'] / batch; "
               "estimate = teacher forward + 3 x student forward"})
  return records


def _ratio(name, numerator, denominator, **fields):
  return {"kind": "ratio", "ratio": name, **fields,
          "value": round(numerator["images_per_second"] /
                         denominator["images_per_second"], 4)}


def run(pairs, method_names, teacher_dtypes=("float32",), batch_size=64, steps=4,
        repeats=3, mode="step", loop_steps=12, compare_torch=False, torch_threads=None,
        flops=False, workdir=None, cpu_devices=0, student_dtype="float32"):
  """Builds every variant, times them interleaved; returns the JSON records."""
  _start_jax(cpu_devices)
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  from kd_jax.data.batching import steps_per_epoch  # pylint: disable=g-import-not-at-top
  records, variants = [], []
  for pair in pairs:
    for method in method_names:
      if method_config(pair, method) is None:
        records.append({"kind": "note", "note": f"skipped method {method!r}: no kd_jax "
                        f"method or configs/cifar_{method}.py"})
        continue
      for dtype in teacher_dtypes:
        variants.append((pair, method, dtype))
  # CE has no teacher: one variant whatever the teacher dtypes.
  seen, unique = set(), []
  for pair, method, dtype in variants:
    key = (pair, method, None if method == "ce" else dtype)
    if key not in seen:
      seen.add(key)
      unique.append((pair, method, dtype))

  train_size = batch_size * (loop_steps if mode != "step" else max(4, steps))
  # As many test images per train step as the real epoch (10,000 per 782 steps).
  test_size = max(1, round(CIFAR_TEST * train_size / (batch_size * REAL_STEPS_PER_EPOCH)))
  dataset = data.load("cifar100", "synthetic", synthetic_train_size=train_size,
                      synthetic_test_size=test_size)
  variants = [Variant(*v, batch_size, dataset, loop_steps, student_dtype) for v in unique]
  info = {**jax_info(), **benchmarks.host_info()}

  benches = []
  tmp = tempfile.TemporaryDirectory(prefix="kd_jax_bench_") if workdir is None else None
  root = workdir or tmp.name
  for i, v in enumerate(variants):
    step_bench = StepBench(v, steps) if mode in ("step", "both") else None
    loop_bench = (LoopBench(v, os.path.join(root, f"loop{i}"))
                  if mode in ("loop", "both") else None)
    warm_bench = step_bench or StepBench(v, steps)
    compile_s = warm_bench.warmup()
    for bench in (step_bench, loop_bench):
      if bench is not None:
        bench.compile_s, bench.second_call_s = compile_s, warm_bench.second_call_s
        bench.warmup_s = bench.warmup() if bench is loop_bench else None
        benches.append(bench)
  torch_benches = []
  if compare_torch:
    torch_benches = _torch_benches(variants, dataset, batch_size, steps, torch_threads,
                                   records)
    for bench in torch_benches:
      bench.compile_s = bench.warmup()
      bench.warmup_s = bench.second_call_s = None
  all_benches = benches + torch_benches
  cached = [_cache_sizes(v) for v in variants]
  samples = benchmarks.interleaved(all_benches, repeats)
  recompiled = {(v.pair, v.method_name, v.teacher_dtype)
                for v, before in zip(variants, cached) if _cache_sizes(v) != before}
  if tmp is not None:
    tmp.cleanup()

  measured = []
  for bench, s in zip(all_benches, samples):
    extra = {} if bench in torch_benches else info
    record = {"kind": "measurement", **bench.record, **extra,
              **benchmarks.summarize(s, batch_size), "steps": bench.steps,
              "repeats": repeats, "compile_s": round(bench.compile_s, 2),
              **benchmarks.host_info()}
    if bench not in torch_benches:
      key = (record["pair"], record["method"], record["teacher_dtype"])
      record["compiled_while_timing"] = key in recompiled
    if bench.second_call_s is not None:
      record["second_call_s"] = round(bench.second_call_s, 2)
    if bench.warmup_s is not None:
      record["loop_warmup_s"] = round(bench.warmup_s, 2)
    if isinstance(bench, LoopBench):
      eval_s = statistics.median(bench.eval_seconds)
      record["eval_s_per_epoch"] = round(eval_s, 3)
      record["eval_ms_per_image"] = round(1e3 * eval_s / record["eval_images"], 3)
      # The whole recipe at this loop's rate (evaluation included): 240 epochs of CIFAR,
      # with the trainer's own steps per epoch (50,000 // batch: the last partial batch drops).
      record["projected_recipe_minutes"] = round(
          REAL_EPOCHS * steps_per_epoch(CIFAR_TRAIN, batch_size) * record["step_ms"] / 6e4, 1)
    measured.append(record)
  records += measured
  records += _ratios(measured)
  if flops:
    step_ms = {(r["pair"], r["method"], r["teacher_dtype"]): r["step_ms"] for r in measured
               if r["mode"] == "step" and r["framework"] == "kd_jax"}
    for record in flops_records(variants, batch_size):
      ms = step_ms.get((record["pair"], record["method"], record["teacher_dtype"]))
      if ms:
        record["achieved_gflops_per_second"] = round(
            record["step_mflops_per_image"] * batch_size / ms, 2)
      records.append(record)
  return records


def _torch_benches(variants, dataset, batch_size, steps, threads, records):
  """PyTorch steps for the (pair, method) of `variants` that torch_step implements."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  except ImportError:
    records.append({"kind": "note", "note": "torch not installed: no --compare-torch"})
    return []
  torch.set_num_threads(threads or os.cpu_count())
  benches, seen = [], set()
  for v in variants:
    key = (v.pair, v.method_name)
    if key in seen:
      continue
    seen.add(key)
    if v.method_name not in torch_step.METHODS:
      records.append({"kind": "note", "note": f"no PyTorch step for method {v.method_name!r}"})
      continue
    step = torch_step.TorchStep(v.pair, dataset.train_images, dataset.train_labels,
                                batch_size, v.method_name)
    benches.append(torch_step.TorchBench(step, steps))
  return benches


def _ratios(measured):
  """loop/step, each variant vs its pair's first (baseline) variant, kd_jax/torch."""
  ratios = []
  jax_steps = [r for r in measured if r["framework"] == "kd_jax" and r["mode"] == "step"]
  for loop in (r for r in measured if r["mode"] == "loop"):
    key = (loop["pair"], loop["method"], loop["teacher_dtype"])
    for step in jax_steps:
      if (step["pair"], step["method"], step["teacher_dtype"]) == key:
        ratios.append(_ratio("loop/step", loop, step, pair=key[0], method=key[1],
                             teacher_dtype=key[2]))
  for pair in dict.fromkeys(r["pair"] for r in jax_steps):
    in_pair = [r for r in jax_steps if r["pair"] == pair]
    base = in_pair[0]
    for other in in_pair[1:]:
      ratios.append(_ratio("variant/baseline (step time ratio, >1 = variant slower)",
                           base, other, pair=pair,
                           variant=f"{other['method']} teacher {other['teacher_dtype']}",
                           baseline=f"{base['method']} teacher {base['teacher_dtype']}"))
  for t in (r for r in measured if r["framework"] == "torch"):
    for step in jax_steps:
      if (step["pair"], step["method"]) == (t["pair"], t["method"]):
        ratios.append(_ratio("kd_jax/torch (images/s, >1 = kd_jax faster)", step, t,
                             pair=t["pair"], method=t["method"],
                             teacher_dtype=step["teacher_dtype"]))
  return ratios


def sweep(args, variants, rounds):
  """Runs this benchmark once per variant in subprocesses, alternating; returns records."""
  base_flags = os.environ.get("XLA_FLAGS", "")
  child = [sys.executable, "-m", "benchmarks.train_step", "--pair", args.pair,
           "--method", args.method, "--teacher-dtype", args.teacher_dtype,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--mode", "step"]
  results = {v: [] for v in variants}
  for r in range(rounds):
    shift = r % len(variants)
    for variant in variants[shift:] + variants[:shift]:
      tokens = [] if variant == "default" else shlex.split(variant)
      flags = [t for t in tokens if t.startswith("--xla")]
      env = dict(os.environ, XLA_FLAGS=" ".join([base_flags] + flags).strip())
      out = subprocess.run(child + [t for t in tokens if t not in flags], env=env,
                           capture_output=True, text=True, check=False)
      lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
      if out.returncode:
        raise RuntimeError(f"variant {variant!r} failed:\n{out.stderr[-3000:]}")
      results[variant] += [json.loads(l) for l in lines]
  records = []
  for variant in variants:
    groups = {}
    for r in results[variant]:
      if r.get("kind") == "measurement":
        groups.setdefault((r["pair"], r["method"], r["teacher_dtype"]), []).append(r)
    for (pair, method, dtype), rs in groups.items():
      ms = statistics.median(x["step_ms"] for x in rs)
      records.append({"kind": "sweep", "variant": variant, "pair": pair, "method": method,
                      "teacher_dtype": dtype, "mode": "step", "step_ms": ms,
                      "images_per_second": round(args.batch_size * 1e3 / ms, 2),
                      "runs_step_ms": [x["step_ms"] for x in rs],
                      "runs_min_sample_ms": [min(x["samples_ms"]) for x in rs],
                      "runs_cpu_ms_per_step": [x["cpu_ms_per_step"] for x in rs],
                      "compile_s": [x["compile_s"] for x in rs],
                      "device_count": rs[0]["device_count"], **benchmarks.host_info()})
  base = {(r["pair"], r["method"], r["teacher_dtype"]): r for r in records
          if r["variant"] == variants[0]}
  for r in list(records):
    b = base.get((r["pair"], r["method"], r["teacher_dtype"]))
    if b is not None and r is not b:
      records.append(_ratio("variant/default (images/s, >1 = variant faster)", r, b,
                            variant=r["variant"], baseline=variants[0], pair=r["pair"],
                            method=r["method"]))
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--pair", default="res56_res20",
                      help="comma-separated configs.cifar_common pairs or teacher:student")
  parser.add_argument("--method", default="kd", help="comma-separated, e.g. ce,kd,dkd,cskd")
  parser.add_argument("--teacher-dtype", default="float32",
                      help="comma-separated: float32, bfloat16")
  parser.add_argument("--student-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the student's compute (config.student.dtype); compare both with "
                           "--variants='--student-dtype=float32;--student-dtype=bfloat16'")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4, help="steps per timed step block")
  parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
  parser.add_argument("--mode", choices=("step", "loop", "both"), default="step")
  parser.add_argument("--loop-steps", type=int, default=12,
                      help="steps per (shortened) epoch = per timed loop block")
  parser.add_argument("--compare-torch", action="store_true",
                      help="also time the PyTorch step (benchmarks/torch_step.py)")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads (default: all cores)")
  parser.add_argument("--flops", action="store_true",
                      help="also print FLOPs per image from XLA's cost analysis")
  parser.add_argument("--cpu-devices", type=int, default=0,
                      help="jax_num_cpu_devices: shard the batch over N CPU devices")
  parser.add_argument("--variants", default="",
                      help="';'-separated settings compared in subprocesses ('default' = "
                           "none), e.g. --variants='default;--xla_cpu_multi_thread_eigen=false'")
  parser.add_argument("--variant-rounds", type=int, default=2)
  parser.add_argument("--workdir", default=None, help="loop mode's run folders (default: tmp)")
  args = parser.parse_args(argv)
  for pair in args.pair.split(","):
    try:
      benchmarks.resolve_pair(pair)
    except ValueError as e:
      parser.error(str(e))  # one line, exit status 2
  if args.variants:
    records = sweep(args, [v.strip() for v in args.variants.split(";")], args.variant_rounds)
  else:
    records = run(args.pair.split(","), args.method.split(","),
                  args.teacher_dtype.split(","), args.batch_size, args.steps, args.repeats,
                  args.mode, args.loop_steps, args.compare_torch, args.torch_threads,
                  args.flops, args.workdir, args.cpu_devices, args.student_dtype)
  for record in records:
    benchmarks.emit(record)


if __name__ == "__main__":
  main()
