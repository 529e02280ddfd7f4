"""The host pipeline's default parallelism follows the host (kd_jax.data.parallelism)."""
import os

import pytest

from kd_jax.data import imagenet, parallelism
from kd_jax.errors import UserError

MAX = parallelism.MAX_THREADS_PER_PROCESS


@pytest.mark.parametrize("cores,expected", [
    (1, (1, 0)), (2, (2, 0)), (MAX, (MAX, 0)),  # small hosts: one thread per core
    (MAX + 1, ((MAX + 1) // 2, 2)),  # past the GIL's limit: worker processes share the cores
    (240, (240 // -(-240 // MAX), -(-240 // MAX))),  # a v4 TPU VM host
])
def test_auto_uses_every_core_without_oversubscribing(cores, expected):
  threads, workers = parallelism.resolve(cores=cores)
  assert (threads, workers) == expected
  assert threads <= MAX and threads * max(workers, 1) <= cores


def test_explicit_settings_are_kept_and_fill_the_other():
  assert parallelism.resolve(16, 0, cores=2) == (16, 0)
  assert parallelism.resolve(3, 4, cores=2) == (3, 4)
  assert parallelism.resolve(parallelism.AUTO_THREADS, 4, cores=16) == (4, 4)
  assert parallelism.resolve(parallelism.AUTO_THREADS, 0, cores=16) == (16, 0)
  assert parallelism.resolve(4, parallelism.AUTO_WORKERS, cores=8) == (4, 2)
  assert parallelism.resolve(2, parallelism.AUTO_WORKERS, cores=2) == (2, 0)


def test_cgroup_quota_caps_the_cores(tmp_path):
  (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
  assert parallelism._cgroup_cpu_limit(str(tmp_path)) == 1.5
  assert parallelism.usable_cores(str(tmp_path), environ={}) == 1
  (tmp_path / "cpu.max").write_text("max 100000\n")
  assert parallelism._cgroup_cpu_limit(str(tmp_path)) is None
  v1 = tmp_path / "v1"
  (v1 / "cpu").mkdir(parents=True)
  (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
  (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
  assert parallelism._cgroup_cpu_limit(str(v1)) == 4.0
  (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
  assert parallelism._cgroup_cpu_limit(str(v1)) is None


def test_affinity_and_local_processes_share_the_host(tmp_path):
  affinity = len(os.sched_getaffinity(0))
  assert parallelism.usable_cores(str(tmp_path), environ={}) == affinity
  assert parallelism.local_process_count({"LOCAL_WORLD_SIZE": "8"}) == 8
  assert parallelism.local_process_count({"SLURM_NTASKS_PER_NODE": "4(x2)"}) == 4
  assert parallelism.local_process_count({"OMPI_COMM_WORLD_LOCAL_SIZE": "x"}) == 1
  assert parallelism.usable_cores(str(tmp_path), environ={"LOCAL_WORLD_SIZE": "1000"}) == 1


def test_pipeline_defaults_are_auto_and_bad_values_one_line_errors(monkeypatch):
  monkeypatch.setattr(parallelism, "usable_cores", lambda: 2)
  assert imagenet.host_parallelism() == (2, 0)
  monkeypatch.setattr(parallelism, "usable_cores", lambda: 4 * MAX)
  # Auto would start worker processes; without parsed absl flags it stays in-process.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    assert imagenet.host_parallelism() == (MAX, 0)
  kwargs = dict(seed=0, source='synthetic', synthetic_size=8, process_index=0, process_count=1)
  with pytest.raises(UserError, match='num_threads must be >= 0'):
    imagenet.make_train_iterator(4, num_threads=-1, **kwargs)
  with pytest.raises(UserError, match='worker_count must be >= -1'):
    imagenet.make_eval_batches(4, worker_count=-2, source='synthetic', synthetic_size=8,
                               process_index=0, process_count=1)
