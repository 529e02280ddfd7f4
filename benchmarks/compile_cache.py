"""Time to the first training step, cold (empty compilation cache) vs warm (kd_jax/compile_cache.py).

  python -m benchmarks.compile_cache --config configs/cifar_kd.py:res32x4_res8x4 --batch-size 64
  python -m benchmarks.compile_cache --config configs/imagenet_deit.py:smoke

Runs the config twice, each in a fresh process on synthetic data with the same, first
empty, cache directory: process start to the end of step 1 (`max_steps=1`: imports,
data, the teacher's evaluation, the first step and its checkpoint; a smoke config's
teacher bootstrap too), with the compiles that missed and hit the cache. A config whose
teacher is a checkpoint gets a random-weight teacher of that model. One JSON line per run,
then the warm/cold ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()

import benchmarks  # pylint: disable=g-import-not-at-top,wrong-import-position


def child(args):
  """One run in this process: seconds from process start to the end of step 1."""
  import collections  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  events = collections.Counter()
  monitoring.register_event_listener(lambda name, **kwargs: events.update([name]))
  config = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      "config", args.config.split(":")[0]).get_config(*args.config.split(":")[1:])
  config.data.source, config.compile_cache_dir = "synthetic", args.cache_dir
  if args.batch_size:
    config.batch_size = args.batch_size
  config.eval_batch_size = min(config.eval_batch_size, config.batch_size)
  if config.teacher.checkpoint:
    config.teacher.checkpoint = args.teacher
  result = train.train_and_evaluate(config, args.workdir, max_steps=1)
  assert result.stopped_at == 1
  print(json.dumps({"seconds_to_first_step": round(time.perf_counter() - START, 2),
                    "compiled": events["/jax/compilation_cache/cache_misses"],
                    "from_cache": events["/jax/compilation_cache/cache_hits"]}))


def random_teacher(config_spec, path):
  """A random-weight teacher of the config's teacher model, saved at `path`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint, models  # pylint: disable=g-import-not-at-top
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  config = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      "config", config_spec.split(":")[0]).get_config(*config_spec.split(":")[1:])
  if not config.teacher.checkpoint:
    return
  config.data.source = "synthetic"
  num_classes = feeders.load(config).num_classes
  checkpoint.save_teacher(models.create(config.teacher.model, num_classes, rngs=nnx.Rngs(0)),
                          path, model_name=config.teacher.model, num_classes=num_classes)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_cache")
  parser.add_argument("--config", default="configs/cifar_kd.py:res32x4_res8x4",
                      help="configs/<file>.py:<argument>")
  parser.add_argument("--batch-size", type=int, default=0, help="0: the config's")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  parser.add_argument("--teacher", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)
  with tempfile.TemporaryDirectory() as tmp:
    teacher = os.path.join(tmp, "teacher")
    random_teacher(args.config, teacher)
    records = []
    for run in ("cold", "warm"):
      command = [sys.executable, "-m", "benchmarks.compile_cache", "--child",
                 "--config", args.config, "--batch-size", str(args.batch_size),
                 "--cache-dir", os.path.join(tmp, "xla"), "--teacher", teacher,
                 "--workdir", os.path.join(tmp, run)]
      done = subprocess.run(command, capture_output=True, text=True, check=False)
      if done.returncode:
        sys.exit(f"{run} run failed:\n{done.stderr[-3000:]}")
      record = {"kind": "measurement", "config": args.config, "run": run,
                "batch_size": args.batch_size or "config",
                **json.loads(done.stdout.strip().splitlines()[-1]), **benchmarks.host_info()}
      records.append(record)
      benchmarks.emit(record)
  benchmarks.emit({"kind": "ratio", "config": args.config, "warm_over_cold": round(
      records[1]["seconds_to_first_step"] / records[0]["seconds_to_first_step"], 3)})


if __name__ == "__main__":
  main()
