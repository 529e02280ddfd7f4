"""KD++ from a trained tiny teacher beats the detector trained alone at equal iterations
(issue #28; benchmarks/detection_kd_gain.py, benchmarks/RESULTS.md 2026-12-07)."""
import json
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_kd_plus_plus_from_a_trained_teacher_beats_the_detector_alone(tmp_path):
  """On the synthetic shapes (2048 train / 256 val images), an R18micro teacher trained
  2400 iterations from scratch; students that start from a shared 600-iteration
  pretraining (as the paper's from ImageNet weights) and train 600 more, alone or with
  KD++ (KD 1, ND 1, T 1), paired by seed 1..6: KD++'s mean COCO AP is higher.
  Seen on 2026-12-07 (one CPU device): teacher 14.32 AP, students alone 8.16-8.89; gains
  -0.16 / +1.07 / +1.14 / +0.88 / +0.71 / +0.46, mean +0.68 AP (an earlier run with other
  class centres: +0.54). The property is weak: blocks of paired seeds gave means from
  about 0 (2 seeds, 8 devices) to +0.73 AP (RESULTS.md), so other numerics (jax
  versions, devices) may fail it now and then.
  From scratch, with no shared start, no gain was seen beyond a 3-7 AP seed spread.
  The benchmark runs as its own process on one CPU device, as its RESULTS numbers were
  taken (this session's 8 simulated devices shard the batch 8 ways and, on a loaded
  machine, time out in XLA's collectives). 29 minutes on 2 shared cores (load 2-6);
  about 18 on quiet ones (from the runs' own times).
  Default-suite checks of the same terms, fast:
  test_detection_kd_methods.py::test_kd_plus_plus_terms_equal_rcnn_ndkd_loss and
  test_detection_kd_forward.py::test_gradients_reach_the_student_and_connectors_only."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  subprocess.run([sys.executable, "benchmarks/detection_kd_gain.py", f"--root={tmp_path}",
                  "--seeds=1,2,3,4,5,6"], cwd=REPO, env=env, check=True, timeout=3600)
  with open(tmp_path / "result.json") as f:
    result = json.load(f)
  gains = [kd[0] - alone[0] for kd, alone in zip(result["kd++"], result["alone"])]
  assert result["teacher"][-1][0] > max(a[0] for a in result["alone"]), result
  assert statistics.fmean(gains) > 0, result
