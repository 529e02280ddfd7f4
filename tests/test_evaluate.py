"""kd_jax.tools.evaluate: metrics by hand, and the command on a saved checkpoint."""
import os
import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

from kd_jax import checkpoint, models
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
