"""kd_jax entry point: python main.py --config=configs/cifar_cskd.py --workdir=DIR.

All logic lives in kd_jax.train. Exit status: 0 done (or already complete); 2 a user
error (bad config, missing data or checkpoint, divergence), printed as one line; 128+N
stopped by signal N (SIGTERM: 143) after writing a checkpoint: rerun to resume.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from kd_jax import train
from kd_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                                "Delete a run of another config found in --workdir.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def _is_multihost():
  """A TPU pod slice or an explicitly coordinated multi-process job."""
  return ("JAX_COORDINATOR_ADDRESS" in os.environ
          or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def _parse_flags(argv):
  """absl's parser; a bad flag or --config override (unknown field, wrong type) is a
  one-line error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as error:
    message = str(error).replace("\\n", " ").replace("\\'", "").strip("'\" ")
    print(f"error: unknown config field in a --config override: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if _is_multihost():
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  if "signal" in result:  # preempted: checkpointed; the conventional 128 + signal number
    sys.exit(128 + result["signal"])


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
