"""Preempted detection runs resume bit-identically (issues #27, #28): SIGTERM mid-run, the
run checkpoints and returns, the same call finishes it, and everything equals a run that
never stopped. Slow: each case runs a micro detector through the loop three times on CPU
(straight, preempted, resumed), about 2 minutes on 2 cores. The default suite checks the
same two parts faster: the loop's SIGTERM resume on classification (test_robustness.py::
test_sigterm_mid_run_checkpoints_and_resumes_to_identical_parameters) and the COCO
pipeline's position (test_coco_data.py::
test_train_order_deterministic_resumable_and_host_independent)."""
import json
import os
import signal

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import coco_det, coco_kd
from kd_jax import checkpoint, models, train
from kd_jax.metrics import MetricWriter

MICRO = "faster_rcnn_R18micro_FPN"
TIMING = ("images_per_second", "flops_per_second")  # wall-clock, not the run's numbers


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("shapes") / "data"


def _short(config, data_dir):
  """Six iterations in three 'epochs' of 2, a log line every iteration, AP at the end."""
  config.data.data_dir, config.data.period = str(data_dir), 2
  config.num_epochs, config.eval_every_epochs, config.log_every_steps = 3, 3, 1
  return config


def _sigterm_then_resume(config, workdir, monkeypatch, at_step):
  """Runs `config` in `workdir` with a SIGTERM right after the train log of `at_step`
  (mid-period: no checkpoint falls there otherwise), checks that it stopped there with a
  checkpoint and no summary, then reruns the same call to the end."""
  original_write = MetricWriter.write

  def write_then_preempt(self, step, kind, scalars):
    original_write(self, step, kind, scalars)
    if kind == "train" and step == at_step:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(MetricWriter, "write", write_then_preempt)
  stopped = train.train_and_evaluate(config, str(workdir))
  assert stopped.signal == signal.SIGTERM and stopped.stopped_at == at_step
  assert not (workdir / "summary.json").exists()
  assert os.path.isdir(workdir / "checkpoints" / str(at_step))
  monkeypatch.setattr(MetricWriter, "write", original_write)
  assert train.train_and_evaluate(config, str(workdir)).finished


def _metric_lines(workdir):
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
          for line in open(workdir / "metrics.jsonl")]


def _final_state(workdir):
  """Every leaf of the last checkpoint's train state (student, method extras such as the
  ReviewKD connectors, optimizer moments, step), by path."""
  steps = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
  state = ocp.StandardCheckpointer().restore(
      str(workdir / "checkpoints" / str(max(steps)) / "state"))
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _assert_same_run(straight, resumed):
  """Losses and COCO AP of every log line, the final train state and summary: equal."""
  assert _metric_lines(straight) == _metric_lines(resumed)
  expected, actual = _final_state(straight), _final_state(resumed)
  assert expected.keys() == actual.keys() and len(expected) > 0
  for name, value in expected.items():
    np.testing.assert_array_equal(actual[name], value, err_msg=name)
  summaries = [json.load(open(w / "summary.json")) for w in (straight, resumed)]
  assert summaries[0]["best_top1"] == summaries[1]["best_top1"]
  assert summaries[0]["last_top1"] == summaries[1]["last_top1"]


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_is_bit_identical_for_a_detector(
    tmp_path, monkeypatch, shapes_dir):
  """configs/coco_det.py:smoke (the micro R18-FPN alone), SIGTERM after iteration 3 of 6."""
  config = _short(coco_det.get_config("smoke"), shapes_dir)
  straight, resumed = tmp_path / "straight", tmp_path / "preempted"
  train.train_and_evaluate(config, str(straight))
  _sigterm_then_resume(config, resumed, monkeypatch, at_step=3)
  _assert_same_run(straight, resumed)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_is_bit_identical_with_reviewkd_connectors(
    tmp_path, monkeypatch, shapes_dir):
  """configs/coco_kd.py:det_reviewkd_nd,smoke from a saved micro teacher, SIGTERM after
  iteration 3 of 6. ReviewKD++: the five ABF connectors are trainable extras in the
  checkpoint; the ND class centres, cached beside the teacher, are read again on resume.
  The reviewkd and nd terms logged after the resume and the connectors' final weights
  equal the straight run's."""
  config = _short(coco_kd.get_config("det_reviewkd_nd,smoke"), shapes_dir)
  teacher_dir = str(tmp_path / "teacher")
  checkpoint.save_teacher(models.create(MICRO, 3, rngs=nnx.Rngs(7)), teacher_dir,
                          model_name=MICRO, num_classes=3)
  config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
  straight, resumed = tmp_path / "straight", tmp_path / "preempted"
  train.train_and_evaluate(config, str(straight))
  _sigterm_then_resume(config, resumed, monkeypatch, at_step=3)
  _assert_same_run(straight, resumed)
  connectors = [name for name in _final_state(resumed) if "connector" in name.lower()
                or "abf" in name.lower()]
  assert connectors, sorted(_final_state(resumed))[:20]
  assert any("reviewkd" in line for line in _metric_lines(resumed)[4:])
