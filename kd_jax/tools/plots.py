"""Training curves of the runs under a folder, as PNGs: one set of figures per pair.

  python -m kd_jax.tools.plots --root=runs --out=plots/

Per teacher→student pair (runs found, grouped and counted as kd_jax.tools.summarize does:
the bands are over the seeds in the table; runs still going beside finished ones are dotted):
  <pair>_top1.png            test top-1 over epochs, a line per method, mean ± std over seeds,
                             the published number dashed in the same colour;
  <pair>_train_terms.png     each train loss term (loss, ce, kd, cskd...) over steps;
  <pair>_cswt_temperature.png  mean CSWT temperature ± its within-batch std (when logged);
  <pair>_ctkd_temperature.png  CTKD's learnt temperature (mean ± within-batch std for the
                             instance-wise one) and, dotted on a second axis, lambda;
  <pair>_feature_norms.png   ND feature norms, student (solid) vs teacher (dashed), when logged.
"""
import math
import os
import re

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from kd_jax.tools import published  # pylint: disable=g-import-not-at-top,wrong-import-position
from kd_jax.tools import summarize  # pylint: disable=g-import-not-at-top,wrong-import-position

# Train-record fields that are not loss terms.
NOT_TERMS = ("step", "kind", "top1", "images_per_second", "lr", "cswt_t_mean", "cswt_t_std",
             "student_norm", "teacher_norm", "ctkd_t_mean", "ctkd_t_std", "ctkd_lambda")


def mean_std_over_seeds(curves):
  """curves: [{x: y}] one per seed -> sorted xs, mean, std (0 where one seed has x)."""
  xs = sorted(set().union(*curves))
  values = [[curve[x] for curve in curves if x in curve] for x in xs]
  mean = np.array([np.mean(v) for v in values])
  std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
  return np.array(xs), mean, std


def _train_curve(run, key):
  """{step: value} of a train field; a resumed run's repeated steps keep the last value."""
  return {r["step"]: r[key] for r in run.train if key in r and math.isfinite(r[key])}


def _band(axis, xs, mean, std, label, color, linestyle="-"):
  axis.plot(xs, mean, label=label, color=color, linestyle=linestyle, linewidth=1.4)
  if np.any(std > 0):
    axis.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _colors(methods):
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {m: cycle[i % len(cycle)] for i, m in enumerate(sorted(methods))}


def _save(figure, path):
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def plot_top1(title, row, path):
  """Test top-1 over epochs, one band per method; beside it a zoom on the last quarter."""
  colors = _colors(row)
  drawings = []  # (function(axis), x, y values) per line, drawn on each panel
  for method, runs in sorted(row.items()):
    cell = summarize.summarize_group(runs)
    if not cell.counted:
      continue
    curves = [{e: r["top1"] for e, r in run.evals.items()} for run in cell.counted]
    xs, mean, std = mean_std_over_seeds(curves)
    label = f"{method} (n={cell.n}, best {cell.best[0]:.2f}, last {cell.last[0]:.2f})"
    drawings.append((lambda a, xs=xs, m=mean, s=std, l=label, c=colors[method]:
                     _band(a, xs, m, s, l, c), xs, mean))
    extra = [run for run in runs if run not in cell.counted and run.evals]
    for index, run in enumerate(extra):  # seeds still running, beside the finished band
      epochs = np.array(sorted(run.evals))
      top1 = np.array([run.evals[e]["top1"] for e in epochs])
      label = f"{method} running ({len(extra)})" if index == 0 else None
      drawings.append((lambda a, x=epochs, y=top1, l=label, c=colors[method]: a.plot(
          x, y, color=c, linestyle=":", linewidth=1.0, label=l), epochs, top1))
    paper = published.for_config(runs[0].config)
    if paper is not None:
      drawings.append((lambda a, p=paper, c=colors[method], l=f"{method} published {paper:.2f}":
                       a.axhline(p, color=c, linestyle="--", linewidth=0.9, label=l),
                       None, np.array([paper])))
  last_epoch = max((run.epochs_done for runs in row.values() for run in runs), default=0)
  zoom_from = int(last_epoch * 0.75) if last_epoch >= 8 else None
  figure, axes = plt.subplots(1, 2 if zoom_from else 1, figsize=(12 if zoom_from else 7, 4.5),
                              squeeze=False)
  for axis in axes.flat:
    for draw, _, _ in drawings:
      draw(axis)
    axis.set(xlabel="epoch", ylabel="test top-1 (%)")
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
  axes[0, 0].set_title(f"Test top-1: {title}")
  axes[0, 0].legend(fontsize=8, loc="lower right")
  if zoom_from:
    values = np.concatenate([y if x is None else y[x >= zoom_from] for _, x, y in drawings])
    zoom = axes[0, 1]
    zoom.set(title=f"epochs {zoom_from}–{last_epoch}", xlim=(zoom_from, last_epoch + 0.5))
    if values.size:
      zoom.set_ylim(values.min() - 1.0, values.max() + 1.0)
  return _save(figure, path)


def plot_train_terms(title, row, path):
  """One panel per train loss term, a band per method that logs it."""
  terms = sorted({k for runs in row.values() for run in runs for r in run.train for k in r
                  if k not in NOT_TERMS},
                 key=lambda k: (k != "loss", k != "ce", k))
  if not terms:
    return None
  columns = min(3, len(terms))
  rows = math.ceil(len(terms) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows),
                              squeeze=False)
  colors = _colors(row)
  for axis, term in zip(axes.flat, terms):
    for method, runs in sorted(row.items()):
      curves = [c for c in (_train_curve(run, term) for run in runs) if c]
      if curves:
        _band(axis, *mean_std_over_seeds(curves), method, colors[method])
    axis.set(title=term, xlabel="step", ylabel="train " + term)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  for axis in axes.flat[len(terms):]:
    axis.axis("off")
  figure.suptitle(f"Train loss terms: {title}")
  return _save(figure, path)


def plot_pair_of_fields(title, row, path, fields, labels, ylabel, band_field=None):
  """fields[0] solid and fields[1] (if any) dashed per method; band from seeds or a field."""
  methods = {m: runs for m, runs in row.items()
             if any(fields[0] in r for run in runs for r in run.train)}
  if not methods:
    return None
  figure, axis = plt.subplots(figsize=(7, 4.5))
  colors = _colors(row)
  for method, runs in sorted(methods.items()):
    for field, label, linestyle in zip(fields, labels, ("-", "--")):
      curves = [c for c in (_train_curve(run, field) for run in runs) if c]
      if not curves:
        continue
      xs, mean, std = mean_std_over_seeds(curves)
      if band_field:  # the logged spread (e.g. over the batch), averaged over seeds
        spread = [c for c in (_train_curve(run, band_field) for run in runs) if c]
        spread = dict(zip(*mean_std_over_seeds(spread)[:2])) if spread else {}
        std = np.array([spread.get(x, 0.0) for x in xs])
      _band(axis, xs, mean, std, f"{method} {label}".strip(), colors[method], linestyle)
  axis.set(title=title, xlabel="step", ylabel=ylabel)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  return _save(figure, path)


def plot_ctkd_temperature(title, row, path):
  """CTKD's learnt temperature per method over steps (band: within-batch std, the
  instance-wise module's spread), and on a second axis, dotted, the curriculum's lambda."""
  methods = {m: runs for m, runs in row.items()
             if any("ctkd_t_mean" in r for run in runs for r in run.train)}
  if not methods:
    return None
  figure, axis = plt.subplots(figsize=(7, 4.5))
  lambda_axis = axis.twinx()
  colors = _colors(row)
  for method, runs in sorted(methods.items()):
    means = [c for c in (_train_curve(run, "ctkd_t_mean") for run in runs) if c]
    xs, mean, std = mean_std_over_seeds(means)
    spread = [c for c in (_train_curve(run, "ctkd_t_std") for run in runs) if c]
    if spread:
      spread = dict(zip(*mean_std_over_seeds(spread)[:2]))
      std = np.array([spread.get(x, 0.0) for x in xs])
    _band(axis, xs, mean, std, f"{method} T", colors[method])
    lambdas = [c for c in (_train_curve(run, "ctkd_lambda") for run in runs) if c]
    if lambdas:
      xs, mean, _ = mean_std_over_seeds(lambdas)
      lambda_axis.plot(xs, mean, color=colors[method], linestyle=":", linewidth=1.0,
                       label=f"{method} lambda")
  axis.set(title=title, xlabel="step", ylabel="temperature T")
  lambda_axis.set_ylabel("curriculum lambda (dotted)")
  axis.grid(alpha=0.3)
  lines, labels = axis.get_legend_handles_labels()
  more_lines, more_labels = lambda_axis.get_legend_handles_labels()
  axis.legend(lines + more_lines, labels + more_labels, fontsize=8)
  return _save(figure, path)


def slug(text):
  return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def plot_all(root, out):
  """Writes every figure for the runs under `root` into `out`; returns the paths."""
  runs = [summarize.load_run(path) for path in summarize.find_runs(root)]
  os.makedirs(out, exist_ok=True)
  written = []
  for key, row in summarize.group_runs(runs).items():
    title = summarize.row_label(*key)
    counted = {m: summarize.summarize_group(rs).counted or rs for m, rs in row.items()}
    base = os.path.join(out, slug(title.replace("→", "-")))
    written += [
        plot_top1(title, row, base + "_top1.png"),
        plot_train_terms(title, counted, base + "_train_terms.png"),
        plot_pair_of_fields(f"CSWT temperature (mean ± batch std): {title}", counted,
                            base + "_cswt_temperature.png", ("cswt_t_mean",), ("",),
                            "temperature", band_field="cswt_t_std"),
        plot_ctkd_temperature(f"CTKD temperature: {title}", counted,
                              base + "_ctkd_temperature.png"),
        plot_pair_of_fields(f"ND feature norms: {title}", counted, base + "_feature_norms.png",
                            ("student_norm", "teacher_norm"), ("student", "teacher"),
                            "mean feature norm ‖f‖"),
    ]
  return [path for path in written if path]


def define_flags():
  """Flags of the command line only (the tools share names, so not at import)."""
  flags.DEFINE_string("root", "runs", "Folder searched for run workdirs.")
  flags.DEFINE_string("out", "plots", "Folder the PNGs are written to.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = plot_all(flags.FLAGS.root, flags.FLAGS.out)
  if not paths:
    raise app.UsageError(f"no runs (config.json + metrics.jsonl) under {flags.FLAGS.root}")
  for path in paths:
    print(path)


if __name__ == "__main__":
  define_flags()
  app.run(main)
