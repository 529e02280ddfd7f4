"""Nothing lost: preemption, crashes mid-save, a damaged checkpoint, two runs on one workdir,
divergence."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kd_jax import guards, train
from kd_jax.errors import UserError
from kd_jax.metrics import MetricWriter, read_metrics
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config(tiny_kd_config, tmp_path_factory):
  """tiny_kd_config with a micro CNN teacher and student: what is checked here (resume,
  refusals, divergence) does not depend on the model, and each of the file's ten runs
  costs a fraction of resnet8's (tests/micro_cnn.py)."""
  with micro_cnn.registered():
    yield micro_cnn.kd_config(tiny_kd_config, str(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, config, dataset):
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.train_and_evaluate(config, workdir, dataset)
  return workdir


def _params(workdir):
  return micro_cnn.final_params(workdir)


def test_sigterm_mid_run_checkpoints_and_resumes_to_identical_parameters(
    tmp_path, monkeypatch, config, dataset, straight_run):
  """SIGTERM at the first log point (step 2 of 8): stop, checkpoint, resume, same result."""
  original_write = MetricWriter.write

  def write_then_preempt(self, step, kind, scalars):
    original_write(self, step, kind, scalars)
    if kind == "train" and step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(MetricWriter, "write", write_then_preempt)
  workdir = str(tmp_path / "preempted")
  stopped = train.train_and_evaluate(config, workdir, dataset)
  assert stopped.signal == signal.SIGTERM and stopped.stopped_at in (2, 3)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  monkeypatch.setattr(MetricWriter, "write", original_write)
  summary = train.train_and_evaluate(config, workdir, dataset)
  for a, b in zip(_params(straight_run), _params(workdir)):
    np.testing.assert_array_equal(a, b)
  # Same per-epoch test accuracy in both runs, each epoch evaluated exactly once, and the
  # summary's best/last are those of the log.
  evals = [[(r["epoch"], r["top1"]) for r in read_metrics(d, "eval")] for d in (straight_run, workdir)]
  assert evals[0] == evals[1] and [e for e, _ in evals[0]] == [1, 2]
  assert summary.last_top1 == evals[0][-1][1]
  assert summary.best_top1 == max(top1 for _, top1 in evals[0])


def test_half_written_checkpoint_is_ignored_on_resume(tmp_path, config, dataset, straight_run):
  """What a kill -9 during a save leaves (Orbax's temporary directory) does not count."""
  workdir = str(tmp_path / "crashed")
  train.train_and_evaluate(config, workdir, dataset, max_steps=4)  # end of epoch 1
  checkpoints = os.path.join(workdir, "checkpoints")
  partial = os.path.join(checkpoints, "6.orbax-checkpoint-tmp-1234567")
  shutil.copytree(os.path.join(checkpoints, "4"), partial)
  os.remove(os.path.join(partial, "_CHECKPOINT_METADATA"))  # truncated mid-write
  train.train_and_evaluate(config, workdir, dataset)
  for a, b in zip(_params(straight_run), _params(workdir)):
    np.testing.assert_array_equal(a, b)


def test_damaged_newest_checkpoint_resumes_from_the_older_to_identical_results(
    tmp_path, config, dataset, straight_run):
  """Bytes of the newest checkpoint changed, sizes kept: its checksums fail, the run
  resumes from the older checkpoint and ends exactly as the run that never stopped (as
  an undamaged resume from that checkpoint does, see the tests above)."""
  workdir = str(tmp_path / "damaged")
  train.train_and_evaluate(config, workdir, dataset, max_steps=6)  # checkpoints 4 and 6
  state = os.path.join(workdir, "checkpoints", "6", "state")
  largest = max((os.path.join(d, f) for d, _, names in os.walk(state) for f in names),
                key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  summary = train.train_and_evaluate(config, workdir, dataset)
  for a, b in zip(_params(straight_run), _params(workdir)):
    np.testing.assert_array_equal(a, b)
  evals = [[(r["epoch"], r["top1"]) for r in read_metrics(d, "eval")] for d in (straight_run, workdir)]
  assert evals[0] == evals[1] and summary.last_top1 == evals[0][-1][1]
  assert os.listdir(os.path.join(workdir, "checkpoints_damaged"))[0].startswith("6.")


@pytest.mark.slow  # the fast checks: test_damaged_files.py (summary.json damaged: one line)
def test_deleted_summary_is_written_again_from_the_last_checkpoint(tmp_path, config, dataset,
                                                                   straight_run):
  """What the damaged-summary.json line tells the user to do works: delete it, rerun."""
  workdir = shutil.copytree(straight_run, str(tmp_path / "copy"))
  with open(os.path.join(straight_run, "summary.json")) as f:
    expected = json.load(f)
  os.remove(os.path.join(workdir, "summary.json"))
  summary = train.train_and_evaluate(config, workdir, dataset)
  assert (summary.best_top1, summary.last_top1, summary.epochs) == (
      expected["best_top1"], expected["last_top1"], expected["epochs"])
  for a, b in zip(_params(straight_run), _params(workdir)):
    np.testing.assert_array_equal(a, b)


def test_second_run_on_the_same_workdir_is_refused(tmp_path, config, dataset):
  workdir = str(tmp_path / "busy")
  os.makedirs(workdir)
  with guards.workdir_lock(workdir):
    with pytest.raises(UserError, match="another run is using"):
      train.train_and_evaluate(config, workdir, dataset)


def test_finished_run_refuses_another_config_naming_the_fields(config, dataset, straight_run):
  changed = config.copy_and_resolve_references()
  changed.optim.lr, changed.num_epochs = 0.2, 3
  before = sorted(os.listdir(straight_run))
  with pytest.raises(UserError, match=r"another config \(num_epochs 2 -> 3, optim.lr 0.05 -> 0.2\)"):
    train.train_and_evaluate(changed, straight_run, dataset)
  assert sorted(os.listdir(straight_run)) == before
  assert train.train_and_evaluate(config, straight_run, dataset).epochs == 2  # same: reports


def test_workdir_of_another_config_is_refused_unless_overwrite(tmp_path, config, dataset):
  workdir = str(tmp_path / "other")
  train.train_and_evaluate(config, workdir, dataset, max_steps=1)
  changed = config.copy_and_resolve_references()
  changed.optim.lr = 0.01
  before = sorted(os.listdir(workdir))
  with pytest.raises(UserError, match="another config"):
    train.train_and_evaluate(changed, workdir, dataset)
  assert sorted(os.listdir(workdir)) == before
  stopped = train.train_and_evaluate(changed, workdir, dataset, max_steps=1, overwrite=True)
  assert stopped.stopped_at == 1


@pytest.mark.parametrize("skip", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_nonfinite_loss_stops_with_the_step_or_is_skipped(tmp_path, config, dataset, skip):
  diverging = config.copy_and_resolve_references()
  diverging.optim.lr = 1e12  # blows up within a few steps
  diverging.skip_nonfinite = skip
  workdir = str(tmp_path / "diverged")
  if not skip:
    with pytest.raises(train.Diverged, match=r"non-finite loss at step \d+ .*kd"):
      train.train_and_evaluate(diverging, workdir, dataset)
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
  else:
    train.train_and_evaluate(diverging, workdir, dataset)
    skipped = sum(r.get("skipped_steps", 0) for r in read_metrics(workdir, "train"))
    assert skipped > 0


@pytest.mark.slow
def test_sigkill_while_saving_then_resume_completes(tmp_path):
  """A real kill -9, aimed at a moment when Orbax is writing a checkpoint."""
  workdir = tmp_path / "killed"
  command = [sys.executable, "main.py", "--config=configs/cifar_kd.py:smoke", f"--workdir={workdir}",
             "--config.num_epochs=6"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if checkpoints.exists() and any("tmp" in p.name for p in checkpoints.iterdir()):
      break
    time.sleep(0.002)
  process.send_signal(signal.SIGKILL)
  process.wait()
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert [r["epoch"] for r in read_metrics(str(workdir), "eval")][-1] == 6


def test_main_exits_143_on_sigterm_with_a_resume_line(tmp_path):
  workdir = tmp_path / "term"
  process = subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/cifar_ce.py:smoke", f"--workdir={workdir}",
       "--config.num_epochs=50"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if "img/s" in line:
      process.send_signal(signal.SIGTERM)
      break
  lines.extend(process.stdout)
  assert process.wait(timeout=60) == 143
  assert any("rerun the same command to resume" in line for line in lines)
  assert (workdir / "checkpoints").is_dir() and not (workdir / "summary.json").exists()
