"""Detection as a task of the one training loop (configs/coco_det.py, DetectionFeeder,
the `detector` method, COCO AP evaluation): config errors, a run end to end, resume."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import cifar_kd, coco_det
from kd_jax import train, validate
from kd_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tmp_path, data_dir, epochs=1, period=2):
  config = coco_det.get_config("smoke")
  config.data.data_dir, config.data.period = str(data_dir), period
  config.num_epochs, config.eval_every_epochs = epochs, epochs
  config.log_every_steps = 1
  return config


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("shapes") / "data"


def test_a_classification_method_on_coco_is_one_line():
  config = coco_det.get_config("smoke")
  config.method = cifar_kd.get_config("smoke").method
  with pytest.raises(UserError, match="method 'kd' trains classification; .*'coco' is a "
                                      "detection dataset"):
    validate.check(config)


def test_the_detector_on_cifar_is_one_line():
  config = cifar_kd.get_config("smoke")
  config.method = coco_det.get_config("smoke").method
  with pytest.raises(UserError, match="method 'detector' trains detection; .*'cifar10' is a "
                                      "classification dataset"):
    validate.check(config)


def test_an_unknown_detector_option_is_one_line():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="anchor_size: not an option of a detector"):
    models.create("faster_rcnn_R18micro_FPN", 3, rngs=nnx.Rngs(0), anchor_size=(32,))
  with pytest.raises(UserError, match="takes no options"):
    models.create("resnet8", 10, rngs=nnx.Rngs(0), input_format="RGB")


def test_a_detection_run_trains_evaluates_and_writes_ap(tmp_path, shapes_dir):
  """Two iterations and a COCO evaluation through train_and_evaluate: losses logged,
  detections json and AP table in the workdir, AP as the run's metric in summary.json."""
  config = _tiny(tmp_path, shapes_dir)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  assert result.finished and result.metric == "AP" and result.best_epoch == 1
  lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train_lines = [line for line in lines if line["kind"] == "train"]
  assert [line["step"] for line in train_lines] == [1, 2]
  for name in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"):
    assert np.isfinite(train_lines[0][name])
  np.testing.assert_allclose(train_lines[0]["loss"], sum(
      train_lines[0][name] for name in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls",
                                        "loss_box_reg")), rtol=1e-5)
  evals = [line for line in lines if line["kind"] == "eval"]
  assert len(evals) == 1 and {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= evals[0].keys()
  assert os.path.isfile(workdir / "eval" / "coco_instances_results.json")
  assert os.path.isfile(workdir / "eval" / "coco_ap.txt")
  summary = json.load(open(workdir / "summary.json"))
  assert summary["metric"] == "AP" and summary["best_top1"] == evals[0]["AP"]


@pytest.mark.slow
def test_detection_resume_is_bit_identical(tmp_path, shapes_dir):
  """Stopped after 3 of 4 iterations (mid-period) and resumed = run straight through:
  parameters and logged losses bit-identical (the data pipeline's position included).
  Default-suite check of the loop's resume: test_robustness.py (classification)."""
  config = _tiny(tmp_path, shapes_dir, epochs=2, period=2)
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  train.train_and_evaluate(config, str(straight))
  assert not train.train_and_evaluate(config, str(stopped), max_steps=3).finished
  train.train_and_evaluate(config, str(stopped))
  lines = lambda w: [json.loads(line) for line in open(w / "metrics.jsonl")  # pylint: disable=g-long-lambda
                     if '"train"' in line]
  assert lines(straight) == [line for line in lines(stopped)]
  assert json.load(open(straight / "summary.json"))["best_top1"] == json.load(
      open(stopped / "summary.json"))["best_top1"]


@pytest.mark.slow
def test_coco_det_smoke_through_main(tmp_path):
  """The README's detection smoke command, offline, ends with AP in summary.json."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "main.py", "--config=configs/coco_det.py:smoke",
                  f"--workdir={tmp_path / 'run'}",
                  f"--config.data.data_dir={tmp_path / 'shapes'}"], cwd=REPO, env=env,
                 check=True, capture_output=True, timeout=1800)
  summary = json.load(open(tmp_path / "run" / "summary.json"))
  assert summary["metric"] == "AP" and summary["best_top1"] >= 0
