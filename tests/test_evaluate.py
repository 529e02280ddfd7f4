"""kd_jax.tools.evaluate: metrics by hand, the command on a saved classifier and on a
detection run (COCO AP as the run evaluates it), bad input."""
import json
import os
import subprocess
import sys

from absl import flags
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import checkpoint, models
from kd_jax.errors import UserError
from kd_jax.tools import evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metrics_by_hand():
  logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top-1 = 1
                     [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # top-1 = 0
                     [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])  # top-1 = 5, top-5 = 5,4,3,2,1
  labels = np.array([1, 1, 0])
  teacher = np.array([[0, 1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
  result = evaluate.metrics(logits, labels, teacher)
  assert result["top1"] == pytest.approx(100 / 3)
  assert result["top5"] == pytest.approx(200 / 3)  # sample 3's label 0 is the lowest score
  assert result["teacher_top1"] == 100.0
  assert result["agreement"] == pytest.approx(100 / 3)


@pytest.mark.slow
def test_command_on_a_teacher_directory(tmp_path):
  model = models.create("resnet8", 10, rngs=nnx.Rngs(1))
  checkpoint.save_teacher(model, str(tmp_path), model_name="resnet8", num_classes=10)
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.tools.evaluate", f"--checkpoint={tmp_path}", "--model=resnet8",
       "--dataset=cifar10", "--source=synthetic"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("top1 ") and "top5 " in result.stdout
  bf16 = subprocess.run(
      [sys.executable, "-m", "kd_jax.tools.evaluate", f"--checkpoint={tmp_path}", "--model=resnet8",
       "--dtype=bfloat16", f"--teacher={tmp_path}", "--teacher_model=resnet8", "--dataset=cifar10",
       "--source=synthetic"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bf16.returncode == 0, bf16.stderr[-2000:]
  agreement = float(bf16.stdout.split("agreement ")[1].rstrip("%\n"))
  assert 50.0 <= agreement <= 100.0
  bad = subprocess.run(
      [sys.executable, "-m", "kd_jax.tools.evaluate", f"--checkpoint={tmp_path}", "--model=resnet14",
       "--dataset=cifar10", "--source=synthetic"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert "is resnet8 with 10 classes" in bad.stderr


def _flags(*args):
  """The command's flags parsed from `args` (its own FlagValues, as the command's)."""
  values = flags.FlagValues()
  evaluate.define_flags(values)
  values(["evaluate", *args])
  return values


def test_a_detector_on_bad_input_is_one_line(tmp_path):
  """Without a run's config: a detector on classification data, a classifier on COCO, a
  teacher for a detector, a bad --options or one for a classifier; COCO data missing
  (all before anything compiles)."""
  with pytest.raises(UserError, match="--model=faster_rcnn_R18micro_FPN is a detector but "
                                      "dataset 'cifar10' is a classification dataset"):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=faster_rcnn_R18micro_FPN",
                        "--dataset=cifar10"))
  with pytest.raises(UserError, match="--model=resnet8 is no detector but dataset 'coco' is "
                                      "a detection dataset"):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=resnet8", "--dataset=coco"))
  with pytest.raises(UserError, match="--teacher and --input_norm are for classification"):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=faster_rcnn_R18micro_FPN",
                        f"--teacher={tmp_path}"))
  with pytest.raises(UserError, match="--options is not a JSON object"):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=faster_rcnn_R18micro_FPN",
                        "--options=[1]"))
  with pytest.raises(UserError, match="--options are a detector's settings; resnet8 takes"):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=resnet8", "--dataset=cifar10",
                        '--options={"input_format": "RGB"}'))
  with pytest.raises(UserError, match="COCO 2017 not found under data_dir="):
    evaluate.run(_flags(f"--checkpoint={tmp_path}", "--model=faster_rcnn_R18micro_FPN",
                        "--source=folder", f"--data_dir={tmp_path / 'no_coco'}"))


def test_a_detection_run_config_sets_data_dtype_and_options(tmp_path):
  """A detection run's workdir: its data, eval batch, student dtype and options (less the
  `weights` it started from), flags overriding them."""
  from configs import coco_det  # pylint: disable=g-import-not-at-top
  run = coco_det.get_config("R18")
  run.student.dtype = "bfloat16"
  (tmp_path / "config.json").write_text(run.to_json())
  run = json.loads(run.to_json())  # as the run wrote it: tuples as lists
  config, dtype, options = evaluate._config(_flags(  # pylint: disable=protected-access
      f"--checkpoint={tmp_path}", "--model=faster_rcnn_R18_FPN", "--data_dir=/coco",
      '--options={"score_thresh_test": 0.1}'))
  assert config.data.to_dict() == dict(run["data"], data_dir="/coco")
  assert config.eval_batch_size == run["eval_batch_size"] and dtype == jnp.bfloat16
  expected = {k: v for k, v in run["student"]["options"].items() if k != "weights"}
  assert options == dict(expected, score_thresh_test=0.1)
  with pytest.raises(UserError, match="--model=resnet8 is no detector but dataset 'coco'"):
    evaluate._config(  # pylint: disable=protected-access
        _flags(f"--checkpoint={tmp_path}", "--model=resnet8"))


@pytest.mark.slow
def test_command_evaluates_a_detection_run_as_the_run_did(tmp_path, capsys):
  """The smoke detector after 2 iterations: the command on its workdir (in this process:
  the run's 8 devices) writes the same detections json (so the same AP, exactly) and AP
  table as the run's own end-of-run evaluation, and prints the AP the run logged.
  Default-suite checks: the evaluator itself (tests/test_detection_task.py
  test_a_detection_run_trains_evaluates_and_writes_ap), the command's settings
  (test_a_detection_run_config_sets_data_dtype_and_options)."""
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  from tests.test_detection_task import _tiny  # pylint: disable=g-import-not-at-top
  workdir, output = tmp_path / "run", tmp_path / "evaluated"
  result = train.train_and_evaluate(_tiny(tmp_path, tmp_path / "shapes"), str(workdir))
  logged = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"eval"' in line][-1]
  assert result.last_top1 == logged["AP"] == json.load(open(workdir / "summary.json"))["best_top1"]
  capsys.readouterr()
  evaluate.run(_flags(f"--checkpoint={workdir}", "--model=faster_rcnn_R18micro_FPN",
                      f"--output={output}"))
  for name in ("coco_instances_results.json", "coco_ap.txt"):
    assert (output / name).read_bytes() == (workdir / "eval" / name).read_bytes(), name
  printed = dict(zip(*[iter(capsys.readouterr().out.splitlines()[0].split())] * 2))
  assert printed == {name: f"{logged[name]:.3f}" for name in
                     ("AP", "AP50", "AP75", "APs", "APm", "APl")}
