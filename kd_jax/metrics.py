"""Where numbers go: JSON lines + TensorBoard in the workdir, and a live progress line.

Only process 0 writes, so a multi-host run records each number once.
"""
import json
import os
import sys
import time

from absl import logging
import jax


def _summary_writer(logdir):
  """tensorboardX's SummaryWriter, imported with torch hidden: tensorboardX imports torch,
  when installed, only to name torch tensors in its type hints, and kd_jax never imports
  torch (it also cost every run ~2 s of CPU to load)."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir)

from kd_jax import run_files


class MetricWriter:
  """Appends {'step', 'kind', ...scalars} to metrics.jsonl and mirrors them to TensorBoard."""

  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      run_files.repair_jsonl_tail(os.path.join(workdir, "metrics.jsonl"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tensorboard = _summary_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step, kind, scalars):
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(f"{kind}/{name}", float(value), int(step))

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def read_metrics(workdir, kind=None):
  """The records of a run's metrics.jsonl, optionally only one kind ('train', 'eval')."""
  records = run_files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r for r in records if kind is None or r["kind"] == kind]


def _duration(seconds):
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def flops_text(flops_per_second):
  """'12.3 TFLOP/s' (SI prefixes)."""
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if flops_per_second >= scale:
      return f"{flops_per_second / scale:.3g} {prefix}FLOP/s"
  return f"{flops_per_second:.3g} FLOP/s"


class Progress:
  """Throughput (images/s and, given the FLOPs of a step, achieved FLOP/s) and time left,
  from the wall clock between two log points."""

  def __init__(self, total_steps, batch_size, start_step, step_flops=None):
    self.total_steps, self.batch_size, self.step_flops = total_steps, batch_size, step_flops
    self._last_step, self._last_time = start_step, time.perf_counter()

  def line(self, step, epoch, num_epochs, scalars):
    now = time.perf_counter()
    steps = step - self._last_step
    images_per_second = steps * self.batch_size / max(now - self._last_time, 1e-9)
    eta = (self.total_steps - step) * self.batch_size / max(images_per_second, 1e-9)
    self._last_step, self._last_time = step, now
    terms = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())
    speed = f"{images_per_second:.0f} img/s"
    if self.step_flops:
      speed += f"  {flops_text(images_per_second / self.batch_size * self.step_flops)}"
    text = (f"epoch {epoch + 1}/{num_epochs}  step {step}/{self.total_steps}  {terms}  "
            f"{speed}  left {_duration(eta)}")
    logging.info(text)
    return images_per_second
