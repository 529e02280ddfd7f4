"""Profiles on demand (kd_jax/profiling.py): config.profile_steps=N,M traces steps N..M
into the workdir's TensorBoard folder; off by default."""
import glob
import os

import jax
import jax.numpy as jnp
import pytest

from kd_jax import profiling, train
from tests import micro_cnn


def _traces(workdir):
  return glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*", "*.xplane.pb"))


def test_trace_holds_exactly_steps_n_to_m(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda logdir: calls.append(("start", logdir)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
  profiler = profiling.StepProfiler((3, 4), str(tmp_path))
  state = jnp.zeros(())
  for done in range(6):  # as Trainer.train_loop: before each step, then once at the end
    profiler(done, state)
    calls.append(("step", done + 1))
  profiler(6, state)
  logdir = os.path.join(str(tmp_path), "tensorboard")
  assert calls == [("step", 1), ("step", 2), ("start", logdir), ("step", 3), ("step", 4),
                   ("stop",), ("step", 5), ("step", 6)]


def test_resumed_inside_the_window_and_stopped_early(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda logdir: calls.append("start"))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append("stop"))
  profiler = profiling.StepProfiler((3, 10), str(tmp_path))
  profiler(4, jnp.zeros(()))  # resumed after step 4: steps 5.. are traced
  profiler.stop()  # the run stopped (preemption) at step 6
  profiler.stop()
  assert calls == ["start", "stop"]


def test_tiny_run_writes_the_trace_into_tensorboard(tmp_path, tiny_kd_config, dataset):
  """On a micro CNN teacher and student (tests/micro_cnn.py): the trace, not the model."""
  with micro_cnn.registered():
    config = micro_cnn.kd_config(tiny_kd_config, str(tmp_path / "teacher"))
    config.profile_steps = (2, 3)
    result = train.train_and_evaluate(config, str(tmp_path / "run"), dataset, max_steps=3)
  assert result.stopped_at == 3
  traces = _traces(str(tmp_path / "run"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_off_by_default(tiny_kd_config):
  assert tuple(tiny_kd_config.profile_steps) == ()
