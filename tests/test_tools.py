"""Tests of kd_jax.tools on fake run folders with known numbers (no training, except slow)."""
import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest

from kd_jax.tools import plots
from kd_jax.tools import published
from kd_jax.tools import summarize
from kd_jax.tools import sweep

REPO_ROOT = sweep.REPO_ROOT
NUM_EPOCHS = 4
STEPS_PER_EPOCH = 10


def write_run(workdir, method, student, teacher, seed, top1s, finished, extra_terms=()):
  """A workdir as main.py leaves it: config.json, metrics.jsonl, summary.json if finished."""
  os.makedirs(workdir, exist_ok=True)
  config = {"seed": seed, "data": {"dataset": "cifar100"}, "student": {"model": student},
            "teacher": {"model": teacher, "checkpoint": ""}, "method": method,
            "num_epochs": NUM_EPOCHS, "batch_size": 64}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  records = [] if method["name"] == "ce" else [
      {"step": 0, "kind": "teacher_eval", "top1": 72.0, "top5": 90.0, "ce": 1.0}]
  for epoch, top1 in enumerate(top1s, 1):
    for step in (epoch * STEPS_PER_EPOCH - 5, epoch * STEPS_PER_EPOCH):
      train = {"step": step, "kind": "train", "loss": 3.0 / step + seed, "ce": 1.0 / step,
               "top1": 50.0, "images_per_second": 1000.0, "lr": 0.05}
      for term in extra_terms:
        train[term] = 2.0 / step + 0.1 * seed
      if "cskd" in extra_terms:
        train |= {"cswt_t_mean": 4.0 + 0.01 * step, "cswt_t_std": 0.5}
      records.append(train)
    records.append({"step": epoch * STEPS_PER_EPOCH, "kind": "eval", "top1": top1, "top5": 95.0,
                    "ce": 1.2, "epoch": float(epoch), "best_top1": max(top1s[:epoch])})
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    if not finished:
      f.write('{"step": 99, "kind": "tra')  # a line being written when we read
  if finished:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump({"best_top1": max(top1s), "last_top1": top1s[-1], "epochs": NUM_EPOCHS}, f)


KD = {"name": "kd", "ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}
CSKD = {"name": "cskd", "ce_weight": 1.0, "weight": 2.0, "cswt": True}


@pytest.fixture(name="root")
def fake_runs(tmp_path):
  """2 methods x 2 finished seeds on res56_res20, plus running, nested and alone runs."""
  root = tmp_path / "runs"
  pair = ("resnet20", "resnet56")
  for seed, top1s in ((0, [60.0, 70.0, 71.0, 70.5]), (1, [61.0, 69.0, 72.0, 71.5])):
    write_run(root / "cifar_kd" / "res56_res20" / f"seed{seed}", KD, *pair, seed, top1s, True,
              ("kd",))
  for seed, top1s in ((0, [62.0, 73.0, 74.0, 73.0]), (1, [63.0, 72.0, 73.5, 73.5])):
    write_run(root / "cifar_cskd" / "res56_res20" / f"seed{seed}", CSKD, *pair, seed, top1s,
              True, ("cskd",))
  # A third KD seed still running, with a smoke-style teacher trained inside its workdir.
  running = root / "cifar_kd" / "res56_res20" / "seed2"
  write_run(running, KD, *pair, 2, [50.0, 65.0], False, ("kd",))
  write_run(running / "teacher", {"name": "ce"}, "resnet56", "resnet56", 2, [70.0], False)
  # A pair where the only run is still running, and a student trained alone.
  write_run(root / "cifar_kd" / "res32x4_res8x4" / "seed0", KD, "resnet8x4", "resnet32x4", 0,
            [40.0], False, ("kd",))
  write_run(root / "cifar_ce" / "resnet20" / "seed0", {"name": "ce"}, "resnet20", "resnet32x4",
            0, [68.0, 69.0, 69.5, 69.25], True)
  # A run that failed while its teacher trained: config.json only, no metrics yet.
  failed = root / "cifar_cskd" / "res56_res20" / "seed2"
  write_run(failed / "teacher", {"name": "ce"}, "resnet56", "resnet56", 2, [70.0], False)
  (failed / "config.json").write_text((failed / "teacher" / "config.json").read_text())
  return str(root)


def test_find_runs_skips_nested_teacher(root):
  found = [os.path.relpath(p, root) for p in summarize.find_runs(root)]
  assert found == ["cifar_ce/resnet20/seed0", "cifar_cskd/res56_res20/seed0",
                   "cifar_cskd/res56_res20/seed1", "cifar_kd/res32x4_res8x4/seed0",
                   "cifar_kd/res56_res20/seed0", "cifar_kd/res56_res20/seed1",
                   "cifar_kd/res56_res20/seed2"]


def test_run_best_and_last_from_metrics(root):
  run = summarize.load_run(os.path.join(root, "cifar_kd", "res56_res20", "seed0"))
  assert (run.method, run.teacher, run.student, run.seed) == ("KD", "resnet56", "resnet20", 0)
  assert (run.best_top1, run.last_top1, run.epochs_done, run.finished) == (71.0, 70.5, 4, True)
  running = summarize.load_run(os.path.join(root, "cifar_kd", "res56_res20", "seed2"))
  assert (running.best_top1, running.last_top1, running.finished) == (65.0, 65.0, False)


def test_markdown_table_numbers(root):
  warnings = []
  text = summarize.table(root, "markdown", warn=warnings.append)
  assert not warnings
  lines = text.splitlines()
  assert lines[0] == "| teacher→student | teacher top-1 | CE | CSKD | KD |"
  # Rows in METHODS.md order, runs alone last.
  assert lines[2] == (
      "| resnet56→resnet20 | 72.00 (paper 72.34) |  "
      "| best 73.75 ± 0.35 · last 73.25 ± 0.35 · n=2 "
      "| best 71.50 ± 0.71 · last 71.00 ± 0.71 · n=2 · paper 70.66 (Δbest +0.84) "
      "(+1 running: epoch 2/4, best 65.00) |")
  assert lines[3] == (
      "| resnet32x4→resnet8x4 | 72.00 (paper 79.42) |  |  "
      "| best 40.00 ± – · last 40.00 ± – · n=1 · paper 73.33 (Δbest -33.33) "
      "(running, epoch 1/4) |")
  assert lines[4] == ("| resnet20 alone | – | best 69.50 ± – · last 69.25 ± – · n=1 · "
                      "paper 69.06 (Δbest +0.44) |  |  |")
  assert "nan" not in text


def test_csv_unrounded_statistics(root):
  rows = list(csv.DictReader(io.StringIO(summarize.table(root, "csv"))))
  kd = next(r for r in rows if r["method"] == "KD" and r["student"] == "resnet20")
  assert int(kd["n"]) == 2
  assert float(kd["best_mean"]) == pytest.approx(71.5)
  assert float(kd["best_std"]) == pytest.approx(math.sqrt(0.5))  # ddof=1
  assert float(kd["last_mean"]) == pytest.approx(71.0)
  assert float(kd["published"]) == 70.66
  assert float(kd["diff_best"]) == pytest.approx(71.5 - 70.66)
  assert kd["status"] == "+1 running: epoch 2/4, best 65.00"
  alone = next(r for r in rows if r["method"] == "CE")
  assert alone["best_std"] == "" and alone["status"] == "finished"


def test_seeds_differing_in_config_are_kept_apart_with_a_warning(root):
  path = os.path.join(root, "cifar_cskd", "res56_res20", "seed1", "config.json")
  with open(path) as f:
    config = json.load(f)
  with open(path, "w") as f:
    json.dump(config | {"num_epochs": 240, "seed": 7}, f)
  warnings = []
  text = summarize.table(root, "long", warn=warnings.append)
  assert warnings == ["warning: CSKD runs on resnet56→resnet20 differ in num_epochs: kept "
                      "apart as CSKD (num_epochs=240), CSKD (num_epochs=4)"]
  assert "| CSKD (num_epochs=4) | 1 | 74.00 ± – | 73.00 ± – |" in text
  assert "| CSKD (num_epochs=240) | 1 | 73.50 ± – | 73.50 ± – |" in text


def test_long_table_and_cli(root):
  result = subprocess.run([sys.executable, "-m", "kd_jax.tools.summarize", f"--root={root}",
                           "--format=long"], capture_output=True, text=True, check=True,
                          cwd=REPO_ROOT)
  assert ("| resnet56→resnet20 | CSKD | 2 | 73.75 ± 0.35 | 73.25 ± 0.35 | – | – | "
          "finished |") in result.stdout


def test_published_lookup():
  assert published.lookup("DKD++", "resnet32x4", "ShuffleV2") == 77.49
  assert published.lookup("KD++", "resnet110", "resnet32") is None
  assert published.alone("wrn_40_2") == 75.61 and published.alone("MobileNetV2") == 64.60
  assert published.published_method({"name": "kd", "nd_weight": 2.0}) == "KD++"
  assert published.published_method({"name": "dkd", "nd_weight": 0.0}) == "DKD"
  assert published.published_method({"name": "kd_nd", "nd_weight": 2.0}) == "KD++"
  assert published.published_method({"name": "dkd_nd", "nd_weight": 1.0}) == "DKD++"
  assert published.published_method({"name": "kd", "standardize": True}) == "KD+LS"
  assert published.lookup("DKD+LS", "resnet32x4", "resnet8x4") == 77.01
  assert published.lookup("KD", "wrn_40_2", "ShuffleV1") == 74.83
  assert "logit standardization" in published.SOURCES[("KD", "wrn_40_2", "MobileNetV2")]
  assert published.published_method({"name": "cskd", "nd_weight": 1.0}) is None
  assert published.published_method({"name": "dist", "warmup_epochs": 0}) == "DIST"
  assert published.published_method({"name": "dist_nd", "nd_weight": 4.0}) == "DIST++"
  assert published.published_method({"name": "reviewkd_nd", "nd_weight": 1.0}) == "ReviewKD++"
  assert published.published_method({"name": "crd_nd", "nd_weight": 1.0}) is None
  assert published.lookup("DIST++", "ResNet50", "MobileNetV2") == 69.80
  assert published.lookup("ReviewKD++", "imagenet_resnet50", "imagenet_mobilenetv1") == 72.96
  config = {"data": {"dataset": "cifar10"}, "student": {"model": "resnet20"},
            "teacher": {"model": "resnet56"}, "method": KD}
  assert published.for_config(config) is None  # CIFAR-100 numbers, not CIFAR-10


def test_plots_write_pngs(root, tmp_path):
  out = tmp_path / "plots"
  paths = plots.plot_all(root, str(out))
  names = sorted(os.path.basename(p) for p in paths)
  assert "resnet56-resnet20_top1.png" in names
  assert "resnet56-resnet20_train_terms.png" in names
  assert "resnet56-resnet20_cswt_temperature.png" in names
  assert "resnet20-alone_top1.png" in names
  assert "resnet20-alone_cswt_temperature.png" not in names  # CE logs no temperature
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000


def test_plots_feature_norms(tmp_path):
  root = tmp_path / "runs"
  for seed in (0, 1):
    write_run(root / "cifar_nd" / "res56_res20" / f"seed{seed}", {"name": "kd", "nd_weight": 2.0},
              "resnet20", "resnet56", seed, [60.0, 70.0], True,
              ("kd", "nd", "student_norm", "teacher_norm"))
  names = sorted(os.path.basename(p) for p in plots.plot_all(str(root), str(tmp_path / "p")))
  assert names == ["resnet56-resnet20_feature_norms.png", "resnet56-resnet20_top1.png",
                   "resnet56-resnet20_train_terms.png"]


def _sweep_cli(*flags_, **kwargs):
  return subprocess.run([sys.executable, "-m", "kd_jax.tools.sweep", *flags_],
                        capture_output=True, text=True, cwd=REPO_ROOT, check=False, **kwargs)


def test_sweep_dry_run_prints_commands_and_skips_finished(tmp_path):
  root = tmp_path / "runs"
  write_run(root / "cifar_kd" / "res56_res20" / "seed0", KD, "resnet20", "resnet56", 0,
            [70.0], True)
  result = _sweep_cli("--configs=configs/cifar_kd.py,configs/cifar_cskd.py",
                      "--pairs=res56_res20", "--seeds=0,1", f"--root={root}", "--dry_run",
                      "--extra=--config.num_epochs=2", "--noseeds_in_one_program")
  assert result.returncode == 0, result.stderr
  python = sys.executable
  assert result.stdout.splitlines() == [
      f"[1/4] skip (finished): {root}/cifar_kd/res56_res20/seed0",
      f"[2/4] {python} main.py --config=configs/cifar_kd.py:res56_res20 "
      f"--workdir={root}/cifar_kd/res56_res20/seed1 --config.seed=1 --config.num_epochs=2",
      f"[3/4] {python} main.py --config=configs/cifar_cskd.py:res56_res20 "
      f"--workdir={root}/cifar_cskd/res56_res20/seed0 --config.seed=0 --config.num_epochs=2",
      f"[4/4] {python} main.py --config=configs/cifar_cskd.py:res56_res20 "
      f"--workdir={root}/cifar_cskd/res56_res20/seed1 --config.seed=1 --config.num_epochs=2"]
  assert not (root / "cifar_kd" / "res56_res20" / "seed1").exists()  # nothing ran


def test_sweep_trains_the_seeds_of_a_pair_in_one_program(tmp_path):
  """Device-fed configs: one main.py --seeds per config x pair, over its unfinished seeds
  (one left: the single-seed command); host-fed ImageNet: one main.py per seed."""
  root = tmp_path / "runs"
  write_run(root / "cifar_kd" / "res56_res20" / "seed0", KD, "resnet20", "resnet56", 0,
            [70.0], True)
  result = _sweep_cli("--configs=configs/cifar_kd.py,configs/cifar_cskd.py",
                      "--pairs=res56_res20", "--seeds=0,1,2", f"--root={root}", "--dry_run")
  assert result.returncode == 0, result.stderr
  python = sys.executable
  assert result.stdout.splitlines() == [
      f"[1/2] {python} main.py --config=configs/cifar_kd.py:res56_res20 "
      f"--workdir={root}/cifar_kd/res56_res20 --seeds=1,2",
      f"[2/2] {python} main.py --config=configs/cifar_cskd.py:res56_res20 "
      f"--workdir={root}/cifar_cskd/res56_res20 --seeds=0,1,2"]
  write_run(root / "cifar_kd" / "res56_res20" / "seed1", KD, "resnet20", "resnet56", 1,
            [70.0], True)
  jobs = sweep.make_jobs(["configs/cifar_kd.py"], ["res56_res20"], ["0", "1", "2"], str(root),
                         seeds_in_one_program=True)
  assert jobs[0].command("python")[3:] == [f"--workdir={root}/cifar_kd/res56_res20/seed2",
                                           "--config.seed=2"]
  jobs = sweep.make_jobs(["configs/imagenet_kd.py"], ["res34_res18"], ["0", "1"], str(root),
                         seeds_in_one_program=True)
  assert [job.seeds for job in jobs] == [(0,), (1,)]


def test_sweep_print_commands_relative_to_repo():
  result = _sweep_cli("--configs=configs/cifar_dkd.py", "--pairs=vgg13_vgg8,res50_mbv2",
                      "--seeds=3", "--root=runs_that_do_not_exist", "--print_commands")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "python main.py --config=configs/cifar_dkd.py:vgg13_vgg8 "
      "--workdir=runs_that_do_not_exist/cifar_dkd/vgg13_vgg8/seed3 --config.seed=3",
      "python main.py --config=configs/cifar_dkd.py:res50_mbv2 "
      "--workdir=runs_that_do_not_exist/cifar_dkd/res50_mbv2/seed3 --config.seed=3"]


def test_sweep_config_variants():
  """FILE:VARIANT runs --config=FILE:VARIANT,PAIR in its own method folder."""
  jobs = sweep.make_jobs(["configs/cifar_nd.py:dkd_nd", "configs/cifar_nd.py"], ["res56_res20"],
                         ["1"], os.path.join(REPO_ROOT, "runs"))
  assert [(j.workdir, j.command("python")[2]) for j in jobs] == [
      ("runs/cifar_nd.dkd_nd/res56_res20/seed1", "--config=configs/cifar_nd.py:dkd_nd,res56_res20"),
      ("runs/cifar_nd/res56_res20/seed1", "--config=configs/cifar_nd.py:res56_res20")]


def test_sweep_rejects_unknown_pair_before_running():
  result = _sweep_cli("--configs=configs/cifar_kd.py", "--pairs=res56_res21", "--dry_run")
  assert result.returncode == 2 and "unknown pair 'res56_res21'" in result.stderr
  assert result.stdout == ""


def test_sweep_reports_failure_and_continues(tmp_path):
  fake_python = tmp_path / "fake_python"
  fake_python.write_text('#!/bin/sh\ncase "$*" in *seed0*) exit 3;; esac\nexit 0\n')
  fake_python.chmod(0o755)
  result = _sweep_cli("--configs=configs/cifar_kd.py", "--pairs=smoke", "--seeds=0,1",
                      f"--root={tmp_path / 'runs'}", f"--python={fake_python}",
                      "--noseeds_in_one_program")
  assert result.returncode == 1
  lines = result.stdout.splitlines()
  assert lines[1].startswith("[1/2] FAILED (exit status 3):") and lines[2].startswith("[2/2] ")
  assert "1 of 2 runs failed" in result.stderr


@pytest.mark.slow
def test_sweep_summarize_plots_end_to_end(tmp_path):
  """Two real smoke seeds in one program (about two minutes on 2 cores), then the table and
  the plots."""
  root = tmp_path / "runs"
  result = _sweep_cli("--configs=configs/cifar_kd.py", "--pairs=smoke", "--seeds=0,1",
                      f"--root={root}", "--extra=--config.num_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  text = summarize.table(str(root), "long")
  assert "| resnet14→resnet8 (cifar10) | KD | 2 |" in text
  assert plots.plot_all(str(root), str(tmp_path / "plots"))
  rerun = _sweep_cli("--configs=configs/cifar_kd.py", "--pairs=smoke", "--seeds=0,1",
                     f"--root={root}")
  assert rerun.stdout.count("skip (finished)") == 1  # one job: both seeds
