"""summarize labels a run by its config, never by its folder (issue #34): every workdir
layout main.py, --seeds and sweep write, and a hand-made one, on fake run folders holding
the resolved configs of real config files (config.json, metrics.jsonl and summary.json
as kd_jax.train and kd_jax.metrics write them; no training)."""
import csv
import io
import json
import os

import pytest

from configs import cifar_ctkd, cifar_kd, coco_det, coco_kd
from kd_jax.tools import summarize
from kd_jax.tools import sweep

PAIR = "res56_res20"
# (config file, its argument) -> (label, best top-1 of each seed); the KD and CTKD numbers
# are the published ones' neighbours (paper 70.66 and 71.19 on resnet56 -> resnet20)
CONFIGS = {
    ("cifar_kd", PAIR): ("KD", {0: 71.0, 1: 72.0}),
    ("cifar_ctkd", PAIR): ("CTKD", {0: 73.0, 1: 74.0}),
    ("cifar_ctkd", f"dkd,{PAIR}"): ("CTKD+DKD", {0: 75.0, 1: 77.0}),
}
MODULES = {"cifar_kd": cifar_kd, "cifar_ctkd": cifar_ctkd, "coco_det": coco_det,
           "coco_kd": coco_kd}


def resolved_config(stem, arg, seed, **overrides):
  """config.json as kd_jax.train._record_run writes it for `--config=configs/STEM.py:ARG`
  with --config.seed=SEED (or --seeds), plus `overrides` ('optim.lr': 0.1)."""
  config = MODULES[stem].get_config(arg)
  config.seed = seed
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return json.loads(config.to_json_best_effort(sort_keys=True, indent=2))


def write_run(workdir, config, best, epochs=3):
  """A finished run: its eval records reach `best` at the last epoch (kd_jax.metrics
  MetricWriter records: step, kind, then float scalars)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f, sort_keys=True, indent=2)
  records = [{"step": 0, "kind": "teacher_eval", "top1": 72.34, "top5": 92.0, "ce": 1.1}]
  for epoch in range(1, epochs + 1):
    top1 = best - (epochs - epoch)
    records += [{"step": 10 * epoch, "kind": "train", "loss": 1.0, "ce": 0.5, "top1": 50.0,
                 "images_per_second": 1000.0, "lr": 0.05},
                {"step": 10 * epoch, "kind": "eval", "top1": top1, "top5": 95.0, "ce": 1.2,
                 "epoch": float(epoch), "best_top1": top1}]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"best_top1": best, "best_epoch": epochs, "last_top1": best,
               "teacher_top1": 72.34, "epochs": epochs, "seconds_this_session": 1.0}, f)


# Where each tool puts the run of (config stem, argument, seed), under `root`.
LAYOUTS = {
    # main.py without --workdir, with --config.seed=N or --seeds: runs/<stem>/<arg>/seed<N>
    "default": lambda root, stem, arg, seed: os.path.join(root, stem, *arg.split(","),
                                                          f"seed{seed}"),
    # main.py --workdir=X: X itself, named as the user likes
    "workdir": lambda root, stem, arg, seed: os.path.join(
        root, f"my_{stem}_{arg.replace(',', '-')}_s{seed}"),
    # main.py --seeds=0,1 --workdir=X: X/seed<N> (here X = root/<name>)
    "seeds_workdir": lambda root, stem, arg, seed: os.path.join(
        root, f"{stem}_{arg.replace(',', '_')}", f"seed{seed}"),
    # by hand: X/<method>/seed<N>
    "hand": lambda root, stem, arg, seed: os.path.join(
        root, {"cifar_kd": "kd", "cifar_ctkd": "ctkd"}[stem] + ("_dkd" * arg.startswith("dkd")),
        f"seed{seed}"),
    # kd_jax.tools.sweep: ROOT/<stem[.variant]>/<pair>/seed<N>
    "sweep": lambda root, stem, arg, seed: _sweep_workdir(root, stem, arg, seed),
}


def _sweep_workdir(root, stem, arg, seed):
  variant, _, pair = arg.rpartition(",")
  entry = f"configs/{stem}.py" + (f":{variant}" if variant else "")
  [job] = sweep.make_jobs([entry], [pair], [seed], root)
  return os.path.join(sweep.REPO_ROOT, job.seed_workdir(seed))


def _csv_rows(root, warnings=None):
  text = summarize.table(str(root), "csv", warn=None if warnings is None else warnings.append)
  return {row["method"]: row for row in csv.DictReader(io.StringIO(text))}


def _write_layout(root, layout, seeds=(0, 1)):
  for (stem, arg), (_, bests) in CONFIGS.items():
    for seed in seeds:
      write_run(LAYOUTS[layout](str(root), stem, arg, seed), resolved_config(stem, arg, seed),
                bests[seed])


def test_two_methods_trained_with_seeds_and_workdir_keep_their_own_rows(tmp_path):
  """The issue's case: `main.py --config=... --seeds=0,1 --workdir=runs/<name>` for KD and
  CTKD: runs/<name>/seed<N>. Labelled by the grandparent folder ('runs') before the fix,
  which averaged both methods into one cell."""
  root = tmp_path / "runs"
  for name, stem in (("kd", "cifar_kd"), ("ctkd", "cifar_ctkd")):
    for seed in (0, 1):
      write_run(str(root / name / f"seed{seed}"), resolved_config(stem, PAIR, seed),
                CONFIGS[(stem, PAIR)][1][seed])
  warnings = []
  rows = _csv_rows(root, warnings)
  assert sorted(rows) == ["CTKD", "KD"] and not warnings
  assert (rows["KD"]["n"], float(rows["KD"]["best_mean"]), rows["KD"]["published"]) == (
      "2", 71.5, "70.66")
  assert (rows["CTKD"]["n"], float(rows["CTKD"]["best_mean"]), rows["CTKD"]["published"]) == (
      "2", 73.5, "71.19")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_labels_runs_by_their_config(tmp_path, layout):
  root = tmp_path / layout
  _write_layout(root, layout)
  assert len(summarize.find_runs(str(root))) == 2 * len(CONFIGS)
  warnings = []
  rows = _csv_rows(root, warnings)
  assert not warnings
  assert sorted(rows) == sorted(label for label, _ in CONFIGS.values())
  for label, bests in CONFIGS.values():
    row = rows[label]
    assert (row["teacher"], row["student"], row["n"]) == ("resnet56", "resnet20", "2")
    assert float(row["best_mean"]) == pytest.approx(sum(bests.values()) / 2)
  markdown = summarize.table(str(root)).splitlines()
  assert markdown[0] == "| teacher→student | teacher top-1 | CTKD | CTKD+DKD | KD |"


def test_one_config_in_several_layouts_is_one_cell(tmp_path):
  """Seeds 0, 1 from main.py's default workdirs and seeds 2, 3 from a sweep: one KD cell."""
  root = tmp_path / "runs"
  for layout, seeds in (("default", (0, 1)), ("sweep", (2, 3))):
    for seed in seeds:
      write_run(LAYOUTS[layout](str(root), "cifar_kd", PAIR, seed),
                resolved_config("cifar_kd", PAIR, seed), 70.0 + seed)
  rows = _csv_rows(root)
  assert list(rows) == ["KD"] and rows["KD"]["n"] == "4"
  assert float(rows["KD"]["best_mean"]) == pytest.approx(71.5)


def test_a_folder_name_never_relabels_a_run(tmp_path):
  """A CTKD+DKD run saved by hand under X/kd/seed0 is CTKD+DKD."""
  root = tmp_path / "runs"
  write_run(str(root / "kd" / "seed0"), resolved_config("cifar_ctkd", f"dkd,{PAIR}", 0), 75.0)
  assert list(_csv_rows(root)) == ["CTKD+DKD"]


def test_configs_differing_beyond_the_seed_never_share_a_statistic(tmp_path):
  """Two KD learning rates: two cells, labelled by what differs, and a warning naming it;
  the seed-like keys (seed, data_dir, teacher checkpoint...) still merge."""
  root = tmp_path / "runs"
  for seed in (0, 1):
    write_run(str(root / "kd" / f"seed{seed}"), resolved_config(
        "cifar_kd", PAIR, seed, **{"data.data_dir": f"/data{seed}",
                                   "teacher.checkpoint": f"/ckpt{seed}"}), 71.0 + seed)
    write_run(str(root / "kd_lr" / f"seed{seed}"), resolved_config(
        "cifar_kd", PAIR, seed, **{"optim.lr": 0.1}), 60.0 + seed)
  warnings = []
  rows = _csv_rows(root, warnings)
  assert sorted(rows) == ["KD (optim.lr=0.05)", "KD (optim.lr=0.1)"]
  assert float(rows["KD (optim.lr=0.05)"]["best_mean"]) == pytest.approx(71.5)
  assert float(rows["KD (optim.lr=0.1)"]["best_mean"]) == pytest.approx(60.5)
  assert rows["KD (optim.lr=0.1)"]["n"] == "2"
  assert warnings == ["warning: KD runs on resnet56→resnet20 differ in optim.lr: kept apart "
                      "as KD (optim.lr=0.05), KD (optim.lr=0.1)"]


def test_labels_name_method_fields_bare_and_source_only_when_needed(tmp_path):
  """Method fields show as `field=value`; the descriptive `source` is named only where
  the other fields do not tell the configs apart, and still keeps them apart."""
  root = tmp_path / "runs"
  write_run(str(root / "a" / "seed0"), resolved_config("cifar_kd", PAIR, 0), 71.0)
  write_run(str(root / "b" / "seed0"), resolved_config(
      "cifar_kd", PAIR, 0, **{"method.temperature": 2.0, "source": "mine"}), 70.0)
  write_run(str(root / "c" / "seed0"), resolved_config(
      "cifar_kd", "res32x4_res8x4", 0, **{"source": "mine"}), 70.0)
  write_run(str(root / "d" / "seed0"), resolved_config("cifar_kd", "res32x4_res8x4", 0), 70.0)
  text = summarize.table(str(root), "long")
  assert "| resnet56→resnet20 | KD (temperature=2.0) | 1 |" in text
  assert "| resnet56→resnet20 | KD (temperature=4.0) | 1 |" in text
  assert "| resnet32x4→resnet8x4 | KD (source=mine) | 1 |" in text
  # a third config that differs from one of the first two in `source` alone: named too
  write_run(str(root / "e" / "seed0"), resolved_config(
      "cifar_kd", PAIR, 0, **{"method.temperature": 2.0}), 69.0)
  rows = _csv_rows(root)
  source = resolved_config("cifar_kd", PAIR, 0)["source"]
  assert {label for label in rows if "temperature" in label} == {
      "KD (temperature=2.0, source=mine)", f"KD (temperature=2.0, source={source})",
      f"KD (temperature=4.0, source={source})"}
  assert all(rows[label]["n"] == "1" for label in rows)


def _coco_ap(ap, ap50, ap75):
  """An evaluation's COCO numbers as kd_jax.detection.evaluation reports them."""
  return {"AP": ap, "AP50": ap50, "AP75": ap75, "APs": ap - 10, "APm": ap, "APl": ap + 10}


def write_detection_run(workdir, config, ap, ap50, ap75, teacher_ap=None, periods=18):
  """A finished detection run as kd_jax.train writes it: COCO AP once, after the last
  period (detectron2's EVAL_PERIOD 0), the teacher's first for a distillation run."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f, sort_keys=True, indent=2)
  records = [] if teacher_ap is None else [
      {"step": 0, "kind": "teacher_eval", **_coco_ap(teacher_ap, 62.0, 45.0)}]
  records += [{"step": 5000 * periods, "kind": "train", "loss": 0.5, "loss_cls": 0.2,
               "images_per_second": 10.0, "lr": 0.0002},
              {"step": 5000 * periods, "kind": "eval", **_coco_ap(ap, ap50, ap75),
               "epoch": float(periods), "best_top1": ap}]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"best_top1": ap, "best_epoch": periods, "last_top1": ap,
               "teacher_top1": teacher_ap, "epochs": periods, "metric": "AP"}, f)


R101, R18 = "faster_rcnn_R101_FPN", "faster_rcnn_R18_FPN"


@pytest.fixture
def detection_root(tmp_path):
  """Runs of configs/coco_kd.py KD++ (two seeds, main.py's default layout) and ReviewKD++
  (kd_jax.tools.sweep's) on R101_R18, and of configs/coco_det.py:R18 alone."""
  root = tmp_path / "runs"
  for seed, (ap, ap50, ap75) in enumerate(((33.0, 53.0, 35.0), (34.0, 55.0, 36.0))):
    write_detection_run(LAYOUTS["default"](str(root), "coco_kd", "det_kd_nd,R101_R18", seed),
                        resolved_config("coco_kd", "det_kd_nd,R101_R18", seed),
                        ap, ap50, ap75, teacher_ap=42.0, periods=36)
  write_detection_run(LAYOUTS["sweep"](str(root), "coco_kd", "det_reviewkd_nd,R101_R18", 0),
                      resolved_config("coco_kd", "det_reviewkd_nd,R101_R18", 0),
                      34.5, 55.5, 37.0, teacher_ap=42.0, periods=36)
  write_detection_run(LAYOUTS["default"](str(root), "coco_det", "R18", 0),
                      resolved_config("coco_det", "R18", 0), 31.0, 51.0, 33.0)
  return root


def test_detection_table_shows_ap_ap50_ap75_and_the_teachers_published_ap(detection_root):
  """issue #28: the detection table has AP (best, last), AP50 and AP75 of the final
  evaluation, the teacher's measured AP next to detectron2's model-zoo number, methods
  under their papers' names, and says that no student numbers could be sourced."""
  rows = _csv_rows(detection_root)
  assert sorted(rows) == ["DETECTOR", "KD++", "ReviewKD++"]
  kd = rows["KD++"]
  assert (kd["dataset"], kd["teacher"], kd["student"], kd["n"], kd["metric"]) == (
      "coco", R101, R18, "2", "AP")
  assert float(kd["best_mean"]) == pytest.approx(33.5)
  assert float(kd["ap50_mean"]) == pytest.approx(54.0)
  assert float(kd["ap50_std"]) == pytest.approx(2 ** 0.5)  # ddof=1
  assert float(kd["ap75_mean"]) == pytest.approx(35.5)
  assert kd["published"] == "" and kd["status"] == "finished"
  alone = rows["DETECTOR"]
  assert (alone["teacher"], alone["student"], float(alone["ap75_mean"])) == ("", R18, 33.0)

  lines = summarize.table(str(detection_root)).splitlines()
  assert lines[0] == "| teacher→student | teacher AP | DETECTOR | KD++ | ReviewKD++ |"
  assert lines[2] == (
      f"| {R101}→{R18} (coco) | 42.00 (paper 42.00) |  "
      "| best 33.50 ± 0.71 · last 33.50 ± 0.71 · AP50 54.00 ± 1.41 · AP75 35.50 ± 0.71 "
      "· n=2 | best 34.50 ± – · last 34.50 ± – · AP50 55.50 ± – · AP75 37.00 ± – "
      "· n=1 |")
  assert lines[3] == (f"| {R18} alone (coco) | – | best 31.00 ± – · last 31.00 ± – · "
                      "AP50 51.00 ± – · AP75 33.00 ± – · n=1 |  |  |")
  assert "none published in a source we could read" in lines[-1]

  long = summarize.table(str(detection_root), "long").splitlines()
  assert long[0] == ("| teacher→student | method | n | best AP | last AP | AP50 | AP75 | "
                     "paper | Δbest | status |")
  assert (f"| {R101}→{R18} (coco) | KD++ | 2 | 33.50 ± 0.71 | 33.50 ± 0.71 | "
          "54.00 ± 1.41 | 35.50 ± 0.71 | – | – | finished |") in long


def test_classification_and_detection_runs_in_one_table(detection_root):
  """Both tasks under one root: the columns name both metrics and classification rows have
  no AP50 / AP75 (a classification table alone keeps its columns: test_tools.py)."""
  write_run(LAYOUTS["default"](str(detection_root), "cifar_kd", PAIR, 0),
            resolved_config("cifar_kd", PAIR, 0), 71.0)
  long = summarize.table(str(detection_root), "long").splitlines()
  assert long[0].startswith("| teacher→student | method | n | best top-1 / AP | "
                            "last top-1 / AP | AP50 | AP75 | paper |")
  assert ("| resnet56→resnet20 | KD | 1 | 71.00 ± – | 71.00 ± – | – | – | 70.66 | "
          "+0.34 | finished |") in long
  rows = _csv_rows(detection_root)
  assert (rows["KD"]["metric"], rows["KD"]["ap50_mean"]) == ("top1", "")
