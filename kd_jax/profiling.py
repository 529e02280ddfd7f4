"""Where a step's time goes, on demand: a JAX profiler trace of training steps N..M.

  python main.py --config=... --config.profile_steps=100,110

writes the trace into <workdir>/tensorboard (plugins/profile/<timestamp>/), where
TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`) shows it beside the
scalars. Steps count from 1 as on the progress line; skip the first few, they compile.
Off by default (config.profile_steps=()): the loop then calls a no-op.
"""
import os

from absl import logging
import jax


class StepProfiler:
  """Called before each step with the number of steps done: traces steps first..last."""

  def __init__(self, steps, workdir):
    self.first, self.last = steps
    self.logdir = os.path.join(workdir, "tensorboard")
    self.active = False

  def __call__(self, done, state):
    """Starts the trace before step `first` runs (or a resumed run's first step inside the
    window); stops it once step `last` is done. `state` is waited for, so the trace holds
    exactly those steps."""
    if not self.active and self.first <= done + 1 <= self.last:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info("profiling steps %d-%d into %s", done + 1, self.last, self.logdir)
    elif self.active and done >= self.last:
      self.stop(state)

  def stop(self, state=None):
    """Ends an open trace (the last step, or a run stopped inside the window)."""
    if self.active:
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile written to %s", self.logdir)


def no_profile(done, state):
  """The loop's profiler when config.profile_steps is ()."""
  del done, state
