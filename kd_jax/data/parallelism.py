"""How many decode threads and worker processes the host pipeline uses, from the host.

The heavy part of each image (JPEG decode, crop-resize) runs in Pillow's C code, which
releases the GIL; the rest (reading and parsing the record, the JPEG header, the crop
draw, the array conversion, grain's per-record maps) holds it. On the 2-core machine of
benchmarks/RESULTS.md ("Input pipeline") that is about a quarter of an image's time (0.9
of 3.6 ms), so the threads of one process stop scaling at about 4 cores' worth of work:
`MAX_THREADS_PER_PROCESS`. Hosts with more cores split them over worker processes
(grain's mp_prefetch), each with that many threads.

More threads than cores only adds switching and, as each thread assembles whole batches,
batches in flight: on a 2-core host 16 threads ran slower than 2 (issue #20). So the
default is one thread per usable core: the CPUs this process may run on
(`os.sched_getaffinity`), capped by a cgroup CPU quota (containers), shared among the
training processes on the host.
"""
import math
import os

AUTO_THREADS = 0  # config.data.num_threads = 0: one per usable core
AUTO_WORKERS = -1  # config.data.worker_count = -1: processes only where threads stop scaling
MAX_THREADS_PER_PROCESS = 4
# Set by launchers that start several processes per host (torchrun, SLURM, Open MPI).
LOCAL_PROCESS_COUNT_VARIABLES = ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE',
                                 'OMPI_COMM_WORLD_LOCAL_SIZE')


def _cgroup_cpu_limit(root: str = '/sys/fs/cgroup') -> float | None:
  """CPUs allowed by a cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us` quota; None if none."""
  try:
    with open(os.path.join(root, 'cpu.max')) as f:
      quota, period = f.read().split()[:2]
    return None if quota == 'max' else int(quota) / int(period)
  except (OSError, ValueError):
    pass
  try:
    with open(os.path.join(root, 'cpu', 'cpu.cfs_quota_us')) as f:
      quota = int(f.read())
    with open(os.path.join(root, 'cpu', 'cpu.cfs_period_us')) as f:
      period = int(f.read())
    return None if quota <= 0 or period <= 0 else quota / period
  except (OSError, ValueError):
    return None


def local_process_count(environ=None) -> int:
  """Training processes on this host, as the launcher says (1 if it says nothing)."""
  environ = os.environ if environ is None else environ
  for name in LOCAL_PROCESS_COUNT_VARIABLES:
    value = environ.get(name, '').split('(')[0]  # SLURM may write e.g. '8(x2)'
    if value.isdigit() and int(value) > 0:
      return int(value)
  return 1


def usable_cores(cgroup_root: str = '/sys/fs/cgroup', environ=None) -> int:
  """CPU cores this process should use: affinity, cgroup quota, shared by local processes."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  limit = _cgroup_cpu_limit(cgroup_root)
  if limit is not None:
    cores = min(cores, max(1, math.floor(limit)))
  return max(1, cores // local_process_count(environ))


def resolve(num_threads: int = AUTO_THREADS, worker_count: int = AUTO_WORKERS,
            cores: int | None = None) -> tuple[int, int]:
  """(threads per process, worker processes; 0: decode in this process) for the settings.

  Explicit values are kept; auto ones are filled in so that threads x max(workers, 1)
  is about the usable cores (`cores`, default `usable_cores()`), with at most
  MAX_THREADS_PER_PROCESS threads per process.
  """
  cores = usable_cores() if cores is None else max(1, int(cores))
  if worker_count == AUTO_WORKERS:
    per_process = num_threads if num_threads != AUTO_THREADS else MAX_THREADS_PER_PROCESS
    worker_count = 0 if cores <= MAX_THREADS_PER_PROCESS else math.ceil(cores / per_process)
  if num_threads == AUTO_THREADS:
    num_threads = max(1, cores // max(worker_count, 1))
  return num_threads, worker_count
