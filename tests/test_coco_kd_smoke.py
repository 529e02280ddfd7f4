"""The detection distillation smoke runs through main.py (slow: whole detectors compile
on CPU): one teacher trained by the first run's bootstrap, then every method distils from
it on the synthetic shapes and reports COCO AP."""
import os
import subprocess
import sys

import pytest

from kd_jax.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=3600):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory):
  """KD++'s smoke run: it trains its R18 teacher first (workdir/teacher)."""
  workdir = str(tmp_path_factory.mktemp("kd_nd"))
  result = _main("--config=configs/coco_kd.py:det_kd_nd,smoke", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("method", ["det_kd_nd", "det_reviewkd_nd", "det_dkd", "det_reviewkd"])
def test_every_detection_method_runs_from_main(tmp_path, smoke_teacher, method):
  workdir = smoke_teacher
  if method != "det_kd_nd":
    workdir = str(tmp_path / method)
    result = _main(f"--config=configs/coco_kd.py:{method},smoke", f"--workdir={workdir}",
                   f"--config.teacher.checkpoint={os.path.join(smoke_teacher, 'teacher')}",
                   "--config.teacher.train_epochs=0")
    assert result.returncode == 0, result.stderr[-3000:]
  train_terms = read_metrics(workdir, "train")[0].keys()
  expected = {"det_kd_nd": {"kd", "nd"}, "det_reviewkd_nd": {"reviewkd", "nd"},
              "det_dkd": {"dkd"}, "det_reviewkd": {"reviewkd"}}[method]
  assert expected | {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= train_terms
  assert len(read_metrics(workdir, "eval")) == 2
