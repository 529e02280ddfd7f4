"""A two-process (two-"host") CPU JAX job gives the result of one process on as many devices."""
import os
import socket
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from kd_jax import checkpoint, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _worker(workdir, teacher_dir, process_id, num_processes, port, devices):
  return subprocess.Popen(
      [sys.executable, "-m", "tests.multihost_worker", str(workdir), str(teacher_dir),
       str(process_id), str(num_processes), str(port), str(devices)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  teacher_dir = tmp_path / "teacher"
  checkpoint.save_teacher(models.create("resnet8", 10, rngs=nnx.Rngs(7)), str(teacher_dir),
                          model_name="resnet8", num_classes=10)
  port = _free_port()
  pair = [_worker(tmp_path / "two", teacher_dir, i, 2, port, 1) for i in range(2)]
  single = _worker(tmp_path / "one", teacher_dir, 0, 1, 0, 2)
  outputs = [p.communicate(timeout=600)[0] for p in pair + [single]]
  for process, output in zip(pair + [single], outputs):
    assert process.returncode == 0, output[-3000:]
  results = [line.split() for out in outputs for line in out.splitlines() if line.startswith("RESULT")]
  assert len(results) == 3 and len({r[2] for r in results}) == 1  # same last top-1 everywhere
  two = jax.tree.leaves(nnx.state(checkpoint.load_teacher(str(tmp_path / "two"), "resnet8", 10)))
  one = jax.tree.leaves(nnx.state(checkpoint.load_teacher(str(tmp_path / "one"), "resnet8", 10)))
  for a, b in zip(two, one):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
