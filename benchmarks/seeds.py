"""N seeds in one program (kd_jax.seeds) against N sequential single-seed runs.

  python -m benchmarks.seeds --pair res56_res20 --method kd --seeds 2,4 --batch-size 64 \
      [--cpu-devices 2] [--steps 3] [--repeats 3] [--train-size 1024] [--within vmap|loop]

Builds, in one process, the single-seed Trainer and one SeedsTrainer per count in --seeds
(random-weight teacher, synthetic CIFAR-100-shaped data on the device), times their bare
jitted steps in alternating blocks (median of --repeats blocks of --steps steps) and
prints JSON lines: each step's time, then per count N the speed-up
`N x single step / N-seed step` (what one program saves against N runs one after another;
> 1 is faster) and the memory of the compiled step per device from XLA's memory analysis
(arguments + outputs - donated + temporaries): the N-seed program's, per seed, and its
ratio to one single-seed run's (what N sequential runs need at a time).
"""
import argparse

import benchmarks
from benchmarks import train_step as train_step_bench


def _trainer(config, dataset, method, num_seeds, within=None):
  """A single-seed Trainer (num_seeds 1) or a SeedsTrainer of seeds 0..N-1."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import methods, models, seeds, train  # pylint: disable=g-import-not-at-top
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  teacher = None
  if method.needs_teacher:
    teacher = models.create(config.teacher.model, dataset.num_classes, rngs=nnx.Rngs(1))
  mesh = train.data_mesh() if num_seeds == 1 else seeds.seeds_mesh(num_seeds)
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  random_cache = lambda name, shape, _: jax.random.uniform(jax.random.key(3), shape)
  students, extras, frozen = [], [], []
  for seed in range(num_seeds):
    seed_config = config.copy_and_resolve_references()
    seed_config.seed = seed
    student = train.create_student(seed_config, dataset.num_classes)
    setup = methods.Setup(student, teacher, feeder.for_seed(seed), nnx.Rngs(seed + 1),
                          random_cache)
    students.append(student)
    extras.append(method.extras(setup))
    frozen.append(method.frozen(setup))
  if num_seeds == 1:
    trainer = train.Trainer(config, feeder, students[0], teacher, method, mesh, extras[0],
                            frozen[0])
    batch = feeder.example_train_batch()
    compiled = trainer.train_step.lower(trainer.state, trainer.init_metric_sums(),
                                        trainer.frozen, batch).compile()
    memory = seeds.step_memory(compiled, 0, 1)
  else:
    trainer = seeds.SeedsTrainer(config, range(num_seeds), feeder, students,
                                 [teacher] * num_seeds, method, mesh, extras, frozen,
                                 within_device=within)
    batch, memory = next(trainer.feeder.train_batches(0)), trainer.memory
  return trainer, batch, memory, dict(mesh.shape)


class SeedsStepBench:
  """A trainer's bare step, `steps` per timed block (as benchmarks.train_step.StepBench)."""

  def __init__(self, trainer, batch, steps):
    self.trainer, self.batch, self.steps, self.sums = trainer, batch, steps, None

  def _run(self, steps):
    import jax  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    t = self.trainer
    state, sums = t.state, self.sums if self.sums is not None else t.init_metric_sums()
    start = time.perf_counter()
    for _ in range(steps):
      state, sums = t.train_step(state, sums, t.frozen, self.batch)
    jax.block_until_ready((state, sums))
    t.state, self.sums = state, sums
    return time.perf_counter() - start

  def time_block(self):
    return self._run(self.steps), self.steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pair", default="res56_res20")
  parser.add_argument("--method", default="kd")
  parser.add_argument("--seeds", default="2,4", help="seed counts, comma-separated")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--cpu-devices", type=int, default=0)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train-size", type=int, default=1024)
  parser.add_argument("--within", default=None, choices=("vmap", "loop"),
                      help="how a device runs its seeds (default: vmap on GPU/TPU, loop on CPU)")
  args = parser.parse_args()
  train_step_bench._start_jax(args.cpu_devices)  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  from kd_jax import data, methods  # pylint: disable=g-import-not-at-top

  config = train_step_bench.method_config(args.pair, args.method)
  config.batch_size, config.teacher.checkpoint = args.batch_size, ""
  dataset = data.load("cifar100", "synthetic", synthetic_train_size=args.train_size,
                      synthetic_test_size=200)
  method = methods.create(config.method)
  counts = [1] + [int(n) for n in args.seeds.split(",")]
  common = {"pair": args.pair, "method": args.method, "batch_size": args.batch_size,
            **train_step_bench.jax_info(), **benchmarks.host_info()}
  benches, built = [], {}
  for count in counts:
    trainer, batch, memory, mesh = _trainer(config, dataset, method, count, args.within)
    bench = SeedsStepBench(trainer, batch, args.steps)
    bench._run(2)  # pylint: disable=protected-access  # compiled already; warm up
    benches.append(bench)
    built[count] = (memory, mesh)
  samples = benchmarks.interleaved(benches, args.repeats)
  summaries = {}
  for count, sample in zip(counts, samples):
    summaries[count] = benchmarks.summarize(sample, args.batch_size * count)
    memory, mesh = built[count]
    within = getattr(benches[counts.index(count)].trainer, "within_device", None)
    benchmarks.emit({"kind": "measurement", "seeds": count, "mesh": mesh, "within": within,
                     **summaries[count],
                     "memory_per_device_mib": round(memory.per_device / 2**20, 2),
                     "memory_per_seed_mib": round(memory.per_seed / 2**20, 2), **common})
  single_ms, single_memory = summaries[1]["step_ms"], built[1][0].per_device
  for count in counts[1:]:
    memory = built[count][0]
    benchmarks.emit({
        "kind": "ratio", "seeds": count, "mesh": built[count][1],
        "speedup_vs_sequential": round(count * single_ms / summaries[count]["step_ms"], 3),
        "memory_vs_one_run": round(memory.per_device / single_memory, 3),
        "memory_per_seed_vs_one_run": round(memory.per_seed / single_memory, 3),
        "devices": jax.device_count(), "pair": args.pair, "method": args.method})


if __name__ == "__main__":
  main()
