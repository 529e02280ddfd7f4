"""Speed benchmarks of kd_jax (see benchmarks/RESULTS.md).

Shared helpers only: pair names, host description, interleaved timing, JSON lines.
Nothing here imports JAX or PyTorch, so either benchmark can run without the other.
"""
import json
import os
import platform
import statistics
import sys
import time

from configs import cifar_common


def resolve_pair(pair):
  """(teacher, student) model names of a configs.cifar_common pair or 'teacher:student'."""
  if pair in cifar_common.PAIRS:
    return cifar_common.PAIRS[pair]
  if ":" in pair:
    teacher, student = pair.split(":", 1)
    return teacher, student
  raise ValueError(f"unknown pair {pair!r}; valid: teacher:student or "
                   f"{', '.join(cifar_common.PAIRS)}")


def cpu_model():
  """The CPU's model name from /proc/cpuinfo (or platform's guess)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def host_info():
  """Fields describing the host, common to every JSON line."""
  return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
          "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def interleaved(benches, repeats):
  """Times one block of every bench per round, rotating the order each round.

  Each bench has `time_block() -> (seconds, steps)`. Returns, per bench, a list of
  (wall seconds per step, process CPU seconds per step) of its blocks; alternating the
  variants spreads the machine's noise over all of them. CPU time (all threads of this
  process) is less sensitive than wall time to other processes sharing the cores.
  """
  samples = [[] for _ in benches]
  for r in range(repeats):
    order = list(range(len(benches)))
    shift = r % max(len(order), 1)
    for i in order[shift:] + order[:shift]:
      cpu = time.process_time()
      seconds, steps = benches[i].time_block()
      samples[i].append((seconds / steps, (time.process_time() - cpu) / steps))
  return samples


def summarize(samples, batch_size):
  """images/s and step ms from the median wall seconds per step, CPU ms, all samples."""
  wall = [w for w, _ in samples]
  cpu = [c for _, c in samples]
  median = statistics.median(wall)
  return {"images_per_second": round(batch_size / median, 2),
          "step_ms": round(1e3 * median, 2),
          "samples_ms": [round(1e3 * s, 2) for s in wall],
          "cpu_ms_per_step": round(1e3 * statistics.median(cpu), 2),
          "threads_busy": round(statistics.median(c / w for w, c in samples), 2)}


def emit(record, stream=None):
  """Prints `record` as one JSON line."""
  print(json.dumps(record), file=stream or sys.stdout, flush=True)
