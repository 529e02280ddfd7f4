"""Guards of a run's workdir: one process at a time, and a clean stop on SIGTERM/SIGINT."""
import contextlib
import fcntl
import os
import signal
import threading

from absl import logging
import jax

from kd_jax.errors import UserError


@contextlib.contextmanager
def workdir_lock(workdir):
  """One run per workdir: a second process on the same workdir is refused. The lock
  is released by the kernel however the holder dies (kill -9 included). In a multi-host
  job only process 0 holds it (the others share the workdir by design)."""
  if jax.process_index() != 0:
    yield
    return
  lock = open(os.path.join(workdir, ".lock"), "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    raise UserError(f"another run is using {workdir} (it holds {workdir}/.lock)") from None
  try:
    yield
  finally:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


@contextlib.contextmanager
def stop_on_signals(trainer):
  """SIGTERM/SIGINT ask the trainer to finish its step, checkpoint and return; a second
  signal acts as usual (so Ctrl-C twice still quits at once)."""
  if threading.current_thread() is not threading.main_thread():
    yield []
    return
  received = []

  def handler(signum, frame):
    del frame
    received.append(signum)
    logging.warning("got %s: stopping after this step with a checkpoint",
                    signal.Signals(signum).name)
    trainer.stop_requested.set()
    signal.signal(signum, previous[signum])

  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)
