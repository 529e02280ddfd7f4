"""kd_jax entry point: python main.py --config=configs/cifar_cskd.py [--workdir=DIR].

Without --workdir a run lives in runs/<config file>/<its argument>/seed<seed> (e.g.
runs/cifar_cskd/res32x4_res8x4/seed0); the same command resumes it. --seeds=0,1,2,3,4
trains one independent run per seed in one program (kd_jax.seeds), each in its own
<workdir>/seed<N> (default runs/<config file>/<its argument>/seed<N>), exactly as
--config.seed=N would. All logic lives in kd_jax.train and kd_jax.seeds. Exit status: 0 done (or already complete); 2 a user
error (bad config, missing data or checkpoint, divergence), printed as one line; 128+N
stopped by signal N (SIGTERM: 143) after writing a checkpoint: rerun to resume.
"""
import importlib.util
import inspect
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from kd_jax import seeds as seeds_lib
from kd_jax import train
from kd_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics "
                               "(default: runs/<config file>/<argument>/seed<seed>).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                                "Delete a run of another config found in --workdir.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds trained together in one program (CIFAR-sized "
                           "data), each in <workdir>/seed<N>; overrides config.seed.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries(logging.logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in record.pathname


def _is_multihost():
  """A TPU pod slice or an explicitly coordinated multi-process job."""
  return ("JAX_COORDINATOR_ADDRESS" in os.environ
          or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _one_line(error):
  """The message of `error` on one line; of a wrapped traceback, only its last line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith(("Traceback", "Attempted")) for line in lines):
    return f"--config: {lines[-1]}"
  return " ".join(lines)


def _parse_flags(argv):
  """absl's parser; a bad flag, a config file that is missing or does not load (unknown
  pair, syntax error) and a bad --config override (unknown field, wrong type) are each a
  one-line error."""
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value.keys()  # the file loads lazily: a missing one fails here
    return argv
  except flags.Error as error:
    _fail(_one_line(error))
  except (AttributeError, KeyError) as error:
    message = str(error).replace("\\n", " ").replace("\\'", "").strip("'\" ")
    _fail(f"unknown config field in a --config override: {message}")
  except Exception as error:  # pylint: disable=broad-except  # a config that failed to load
    _fail(_one_line(error))


def default_workdir(config_flag, seed):
  """runs/<config file stem>/<argument, ',' -> '/'>/seed<seed>; the argument defaults to
  get_config's own default."""
  path, _, arg = config_flags.get_config_filename(config_flag).partition(":")
  if not arg:
    spec = importlib.util.spec_from_file_location("_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arg = next(iter(inspect.signature(module.get_config).parameters.values())).default
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", stem, *str(arg).split(","), f"seed{seed}")


def main(argv):
  del argv
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if _is_multihost():
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    if _SEEDS.value is not None:
      results = _train_seeds()
    else:
      workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"], _CONFIG.value.seed)
      logging.info("workdir: %s", workdir)
      results = [train.train_and_evaluate(_CONFIG.value, workdir, overwrite=_OVERWRITE.value)]
  except UserError as error:
    _fail(error)
  signals = [result.signal for result in results if result.signal is not None]
  if signals:  # preempted: checkpointed; the conventional 128 + signal number
    sys.exit(128 + signals[0])


def _train_seeds():
  try:
    seeds = [int(seed) for seed in _SEEDS.value]
  except ValueError:
    raise UserError(f"--seeds={','.join(_SEEDS.value)}: give integers, e.g. --seeds=0,1,2") from None
  if not seeds:
    raise UserError("--seeds is empty: give integers, e.g. --seeds=0,1,2")
  workdirs = [os.path.join(_WORKDIR.value, f"seed{seed}") if _WORKDIR.value
              else default_workdir(flags.FLAGS["config"], seed) for seed in seeds]
  logging.info("workdirs: %s", ", ".join(workdirs))
  return seeds_lib.train_and_evaluate_seeds(_CONFIG.value, seeds, workdirs,
                                            overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
