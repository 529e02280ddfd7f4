"""Result tables over seeds, next to the published numbers (METHODS.md sections 6 and 8).

  python -m kd_jax.tools.summarize --root=runs [--format=markdown|long|csv]

Finds every run under --root (a folder with config.json and metrics.jsonl; the teacher a
smoke run trains in its `teacher/` subfolder is not counted), groups them by method and
teacher→student pair, and prints best-epoch and last-epoch test top-1 as mean ± sample std
(ddof=1) over seeds (detection runs: COCO box AP, with the final evaluation's AP50 and AP75
beside it, the columns of the papers' detection tables). All come from metrics.jsonl, so
runs still training are shown too.
When a group has finished runs, only those enter the statistics and the others are noted
('+1 running: epoch 3/240, best 41.20'); a group with none finished shows its running runs'
numbers marked '(running, epoch 3/240)'.

A run is labelled by what it is, read from its config.json, never by where its folder
sits (main.py's runs/<config>/<arg>/seed<N>, --workdir=X, --seeds ... --workdir=X's
X/seed<N>, sweep's ROOT/<method>/<pair>/seed<N> or any hand-made folder): the published
name it reproduces ('KD', 'DKD++', 'CTKD+LS'; kd_jax.tools.published), else its
config.method.name upper-cased with its add-ons ('+DKD' a DKD term, '+instance-T', '+ND'
an ND term, '+LS' logit standardization). Runs share a statistic only when their configs
agree in everything but the seed-like SEED_KEYS; runs of one pair and label whose configs
differ otherwise are kept apart, each label followed by the fields that differ ('KD
(optim.lr=0.1)'), and a warning names them.
"""
import csv
import dataclasses
import io
import json
import math
import os
import statistics
import sys

from absl import app
from absl import flags

from kd_jax import run_files
from kd_jax.errors import UserError
from kd_jax.tools import published

# Methods trained without a teacher: their rows are one model, compared with its alone number.
TEACHERLESS = ("ce", "detector")
# Shown beside a detection run's AP: the final evaluation's, as the papers' tables (the ND,
# DKD and ReviewKD papers' COCO tables give AP, AP50, AP75 of the final model).
DETECTION_COLUMNS = ("AP50", "AP75")
DASH = "–"


def read_jsonl(path):
  """Records of a JSON-lines file; a half-written last line (a run writing) is skipped."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


@dataclasses.dataclass(eq=False)  # runs compare by identity
class Run:
  """One workdir: its resolved config and its metrics, read from metrics.jsonl."""
  path: str
  method: str
  config: dict
  evals: dict  # epoch -> eval record; the last written wins (a resumed run may repeat one)
  train: list  # train records, in file order
  teacher_top1: float | None
  has_summary: bool

  @property
  def seed(self):
    return self.config.get("seed")

  @property
  def dataset(self):
    return self.config["data"]["dataset"]

  @property
  def student(self):
    return self.config["student"]["model"]

  @property
  def teacher(self):
    """The teacher model, or None for a method trained alone."""
    if self.config["method"].get("name") in TEACHERLESS:
      return None
    return self.config["teacher"]["model"]

  @property
  def num_epochs(self):
    return int(self.config["num_epochs"])

  @property
  def epochs_done(self):
    return max(self.evals, default=0)

  @property
  def finished(self):
    return self.has_summary or self.epochs_done >= self.num_epochs

  @property
  def metric(self):
    """What the run's evaluations report: test top-1, or COCO box AP for detection."""
    return "AP" if any("AP" in r for r in self.evals.values()) else "top1"

  @property
  def best_top1(self):
    """Best test top-1 (AP) over the epochs so far (None before the first evaluation)."""
    return max((r[self.metric] for r in self.evals.values()), default=None)

  @property
  def last_top1(self):
    """Test top-1 (AP) after the latest evaluated epoch (the final one once finished)."""
    return self.evals[self.epochs_done][self.metric] if self.evals else None

  def last_value(self, name):
    """Metric `name` (e.g. AP50) of the latest evaluated epoch, or None."""
    return self.evals[self.epochs_done].get(name) if self.evals else None


def method_label(config):
  """What the run with this resolved `config` (a dict) is: its published name, else
  config.method.name upper-cased with its add-ons (see the module docstring)."""
  method = config["method"]
  name = published.published_method(method)
  if name:
    return name
  name = str(method.get("name", "?"))
  with_nd = name.endswith("_nd") or any(
      key.startswith("nd") and value not in (0, 0.0, False, None)
      for key, value in method.items() if key != "name")
  label = name.removesuffix("_nd").upper()
  if method.get("dkd_weight") and name != "dkd":
    label += "+DKD"
  if method.get("temperature_module") == "instance":
    label += "+instance-T"
  return label + ("+ND" if with_nd else "") + ("+LS" if method.get("standardize") else "")


def load_run(path):
  """Reads the run in workdir `path`."""
  config = run_files.read_json(os.path.join(path, "config.json"),
                               "restore it from a copy, or leave this run out")
  records = read_jsonl(os.path.join(path, "metrics.jsonl"))
  evals = {int(r["epoch"]): r for r in records if r.get("kind") == "eval"}
  teacher_evals = [r.get("top1", r.get("AP")) for r in records if r.get("kind") == "teacher_eval"]
  return Run(path=path, method=method_label(config), config=config, evals=evals,
             train=[r for r in records if r.get("kind") == "train"],
             teacher_top1=teacher_evals[-1] if teacher_evals else None,
             has_summary=os.path.exists(os.path.join(path, "summary.json")))


def find_runs(root):
  """Workdirs under `root` (itself included) with metrics; never a run inside a run.

  A folder with config.json is a run's workdir (metrics.jsonl appears once it trains), so
  its subfolders, such as the teacher a smoke run trains first, are not searched.
  """
  found = []
  for path, dirnames, filenames in os.walk(root):
    dirnames.sort()
    if "config.json" in filenames:
      if "metrics.jsonl" in filenames:
        found.append(path)
      dirnames[:] = []
    else:
      dirnames[:] = [d for d in dirnames if d not in ("checkpoints", "tensorboard")]
  return found


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


# Config keys that differ between the seeds of one experiment without changing it.
SEED_KEYS = {"seed", "data.data_dir", "teacher.checkpoint", "log_every_steps",
             "checkpoint_keep", "eval_batch_size"}
# Free text about a run: named in a label only when nothing else tells its runs apart.
DESCRIPTIVE_KEYS = {"source"}


def config_identity(config):
  """The config without its SEED_KEYS, as text: runs with equal identities are seeds of
  one experiment."""
  flat = _flatten(config)
  return json.dumps({k: v for k, v in flat.items() if k not in SEED_KEYS}, sort_keys=True)


def config_differences(runs):
  """Config keys (other than SEED_KEYS) whose values differ between `runs`."""
  flats = [_flatten(r.config) for r in runs]
  keys = set().union(*flats) - SEED_KEYS
  return sorted(k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1)


def _setting(flat, key):
  """'field=value' (a method field without its section), as a label shows it."""
  value = flat.get(key, "unset")
  text = value if isinstance(value, str) else json.dumps(value)
  return f"{key.removeprefix('method.')}={text}"


def _split_labels(method, flats, keys):
  """'METHOD (key=value, ...)' for each flattened config in `flats`."""
  return [f"{method} ({', '.join(_setting(flat, k) for k in keys)})" for flat in flats]


@dataclasses.dataclass
class Split:
  """Runs of one pair and label whose configs differ beyond the seed: kept apart."""
  method: str
  row: tuple  # (dataset, teacher, student)
  keys: list  # the config keys that differ
  labels: list  # the labels they got, one per config


def group_runs(runs, splits=None):
  """{(dataset, teacher, student): {label: [runs sorted by seed]}}: one label per config
  (SEED_KEYS aside); runs of one pair whose method labels are equal but whose configs
  differ get the differing fields appended (each such case appended to `splits`)."""
  by_config = {}
  for run in runs:
    row = by_config.setdefault((run.dataset, run.teacher, run.student), {})
    row.setdefault(run.method, {}).setdefault(config_identity(run.config), []).append(run)
  groups = {}
  for key, row in by_config.items():
    groups[key] = {}
    for method, configs in row.items():
      if len(configs) == 1:
        groups[key][method] = next(iter(configs.values()))
        continue
      flats = [_flatten(config_runs[0].config) for config_runs in configs.values()]
      differ = config_differences([config_runs[0] for config_runs in configs.values()])
      labels = _split_labels(method, flats, [k for k in differ if k not in DESCRIPTIVE_KEYS])
      if len(set(labels)) < len(labels):  # told apart by a descriptive key too
        labels = _split_labels(method, flats, differ)
      groups[key].update(zip(labels, configs.values()))
      if splits is not None:
        splits.append(Split(method, key, differ, sorted(labels)))
  for row in groups.values():
    for method_runs in row.values():
      method_runs.sort(key=lambda r: (r.seed is None, r.seed, r.path))
  return groups


def mean_std(values):
  """(mean, sample std with ddof=1); std is None for a single value."""
  mean = math.fsum(values) / len(values)
  return mean, (statistics.stdev(values) if len(values) > 1 else None)


@dataclasses.dataclass
class Cell:
  """The statistics of one (pair, method) group."""
  runs: list
  counted: list  # the runs in the statistics
  best: tuple | None  # (mean, std)
  last: tuple | None
  published: float | None
  note: str  # '' when every run finished
  metric: str = "top1"  # what best/last are: "top1", or "AP" for detection
  final: dict = dataclasses.field(default_factory=dict)  # DETECTION_COLUMNS -> (mean, std)

  @property
  def n(self):
    return len(self.counted)

  @property
  def difference(self):
    """Best-epoch mean minus the published number (papers since DKD report best epoch)."""
    if self.best is None or self.published is None:
      return None
    return self.best[0] - self.published


def _epochs(runs):
  done = sorted({r.epochs_done for r in runs})
  span = str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}"
  return f"epoch {span}/{max(r.num_epochs for r in runs)}"


def summarize_group(runs):
  """Mean ± std of best and last top-1 over `runs`' seeds; finished runs preferred."""
  evaluated = [r for r in runs if r.evals]
  finished = [r for r in evaluated if r.finished]
  counted = finished or evaluated
  running = [r for r in runs if r not in counted]
  if not finished and runs:
    note = "running, " + _epochs(runs)
    if len(runs) > 1:
      note = f"{len(runs)} " + note
  elif running:
    bests = ", ".join(f"best {r.best_top1:.2f}" for r in running if r.evals)
    note = f"+{len(running)} running: {_epochs(running)}" + (f", {bests}" if bests else "")
  else:
    note = ""
  best = mean_std([r.best_top1 for r in counted]) if counted else None
  last = mean_std([r.last_top1 for r in counted]) if counted else None
  metric = counted[0].metric if counted else "top1"
  final = {}
  for name in DETECTION_COLUMNS if metric == "AP" else ():
    values = [r.last_value(name) for r in counted]
    if None not in values:
      final[name] = mean_std(values)
  return Cell(runs=runs, counted=counted, best=best, last=last,
              published=published.for_config(runs[0].config), note=note, metric=metric,
              final=final)


def _fmt(stat):
  if stat is None:
    return DASH
  mean, std = stat
  return f"{mean:.2f} ± {DASH if std is None else f'{std:.2f}'}"


def _signed(value):
  return DASH if value is None else f"{value:+.2f}"


def row_label(dataset, teacher, student):
  label = student + " alone" if teacher is None else f"{teacher}→{student}"
  return label if dataset == "cifar100" else f"{label} ({dataset})"


def _row_order(key):
  dataset, teacher, student = key
  order = published.PAIR_ORDER
  rank = order.index((teacher, student)) if (teacher, student) in order else len(order)
  return (teacher is None, dataset, rank, teacher or "", student)


def _teacher_cell(dataset, teacher, student, row):
  """Measured teacher top-1 (mean over the row's runs) and the published one."""
  del student  # the row key carries it; the teacher alone matters here
  if teacher is None:
    return DASH
  measured = [r.teacher_top1 for runs in row.values() for r in runs
              if r.teacher_top1 is not None]
  paper = published.teacher(teacher, dataset)
  text = f"{math.fsum(measured) / len(measured):.2f}" if measured else DASH
  return text + (f" (paper {paper:.2f})" if paper is not None else "")


def _cell_text(cell):
  text = f"best {_fmt(cell.best)} · last {_fmt(cell.last)}"
  text += "".join(f" · {name} {_fmt(stat)}" for name, stat in cell.final.items())
  text += f" · n={cell.n}"
  if cell.published is not None:
    text += f" · paper {cell.published:.2f} (Δbest {_signed(cell.difference)})"
  return text + (f" ({cell.note})" if cell.note else "")


LEGEND = ("Test top-1 (%): best = highest epoch, last = final epoch; mean ± sample std "
          f"(ddof=1, {DASH} for one run) over seeds; n = runs in the statistics; "
          "Δbest = best mean − paper.")
DETECTION_LEGEND = (
    "Detection (coco) rows: COCO box AP (%) in place of top-1, and AP50, AP75 of the final "
    "evaluation (mean ± std over seeds); the teachers' paper AP is detectron2's model zoo "
    f"({published.DETECTION_SOURCE}); students' and distilled detectors' COCO numbers: "
    "none published in a source we could read.")


def _metrics(cells):
  """'top-1', 'AP' or 'top-1 / AP': what the table's best/last columns hold."""
  metrics = {cell.metric for row in cells.values() for cell in row.values()}
  return " / ".join(name for metric, name in (("top1", "top-1"), ("AP", "AP"))
                    if metric in metrics)


def _legend(cells):
  detection = any(cell.metric == "AP" for row in cells.values() for cell in row.values())
  return [LEGEND] + ([DETECTION_LEGEND] if detection else [])


def _markdown(groups, cells, methods):
  lines = [f"| teacher→student | teacher {_metrics(cells)} | " + " | ".join(methods) + " |",
           "|---" * (len(methods) + 2) + "|"]
  for key in sorted(groups, key=_row_order):
    texts = [_cell_text(cells[key][m]) if m in cells[key] else "" for m in methods]
    lines.append(f"| {row_label(*key)} | {_teacher_cell(*key, groups[key])} | "
                 + " | ".join(texts) + " |")
  return "\n".join(lines + [""] + _legend(cells))


def _long(groups, cells):
  """One row per pair and method; AP50 and AP75 columns when detection runs are present."""
  metric = _metrics(cells)
  extra = DETECTION_COLUMNS if "AP" in metric.split(" / ") else ()
  header = ["teacher→student", "method", "n", f"best {metric}", f"last {metric}", *extra,
            "paper", "Δbest", "status"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for key in sorted(groups, key=_row_order):
    for method, cell in sorted(cells[key].items()):
      paper = DASH if cell.published is None else f"{cell.published:.2f}"
      finals = "".join(f"{_fmt(cell.final.get(name))} | " for name in extra)
      lines.append(f"| {row_label(*key)} | {method} | {cell.n} | {_fmt(cell.best)} | "
                   f"{_fmt(cell.last)} | {finals}{paper} | {_signed(cell.difference)} | "
                   f"{cell.note or 'finished'} |")
  return "\n".join(lines + [""] + _legend(cells))


def _csv(groups, cells):
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  finals = [f"{name.lower()}_{stat}" for name in DETECTION_COLUMNS for stat in ("mean", "std")]
  writer.writerow(["dataset", "teacher", "student", "method", "n", "metric", "best_mean",
                   "best_std", "last_mean", "last_std", *finals, "published", "diff_best",
                   "status"])
  for key in sorted(groups, key=_row_order):
    for method, cell in sorted(cells[key].items()):
      best, last = cell.best or (None, None), cell.last or (None, None)
      final = [x for name in DETECTION_COLUMNS for x in cell.final.get(name, (None, None))]
      writer.writerow([*key, method, cell.n, cell.metric, *best, *last, *final,
                       cell.published, cell.difference, cell.note or "finished"])
  return out.getvalue().rstrip("\n")


FORMATS = ("markdown", "long", "csv")


def table(root, fmt="markdown", warn=None):
  """The results under `root` as text in format `fmt` (see FORMATS); None if no runs."""
  runs = [load_run(path) for path in find_runs(root)]
  if not runs:
    return None
  splits = []
  groups = group_runs(runs, splits)
  cells = {key: {m: summarize_group(rs) for m, rs in row.items()} for key, row in groups.items()}
  for split in splits if warn else ():
    warn(f"warning: {split.method} runs on {row_label(*split.row)} differ in "
         f"{', '.join(split.keys)}: kept apart as {', '.join(split.labels)}")
  if fmt == "markdown":
    return _markdown(groups, cells, sorted({m for row in groups.values() for m in row}))
  if fmt == "long":
    return _long(groups, cells)
  if fmt == "csv":
    return _csv(groups, cells)
  raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def define_flags():
  """Flags of the command line only (the tools share names, so not at import)."""
  flags.DEFINE_string("root", "runs", "Folder searched for run workdirs.")
  flags.DEFINE_enum("format", "markdown", FORMATS,
                    "markdown: pairs x methods; long: one row per pair and method; "
                    "csv: the long table with unrounded numbers.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = flags.FLAGS.root
  try:
    text = table(root, flags.FLAGS.format, warn=lambda m: print(m, file=sys.stderr))
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  if text is None:
    print(f"no runs (config.json + metrics.jsonl) under {root}", file=sys.stderr)
    sys.exit(1)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
