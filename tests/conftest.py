"""Test session set-up: 8 simulated CPU devices, so sharding tests can compare 1 vs 8.

Set before JAX initialises its backends; single-device tests just use device 0.
Also one persistent XLA compilation cache per session, in a temporary directory, not the
user's ~/.cache (see _share_compilations), and, under xdist, whole files per worker (see
pytest_cmdline_main); tests/README.md has the numbers.
"""
import atexit
import os
import shutil
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_CACHE_VARIABLE = "KD_JAX_TEST_COMPILATION_CACHE"


def _share_compilations():
  """One persistent compilation cache for this session's processes: the xdist workers and
  the main.py runs the tests start (through the environment) reuse each other's XLA
  executables instead of compiling the same small models again.

  A fresh directory per session (made by the first process, inherited by the rest, removed
  at its exit), so nothing outlives a run: an entry is only ever found for the identical
  XLA program, compile options, devices and jax/XLA versions (JAX's cache key), so a hit
  gives the executable a compile would.

  No size limit: with one, JAX's LRU cache lists and stats every entry of the directory on
  each write (`_evict_if_needed`), and the suite writes ~10^4 entries, so each compile got
  slower as the run went on (tests/README.md). Without it there is no file lock either: an
  entry read while another process writes it is truncated, fails to decompress, and JAX
  warns and compiles (`compiler._cache_read`); it never loads a wrong executable.
  """
  directory = os.environ.get(_CACHE_VARIABLE)
  if not directory:
    directory = tempfile.mkdtemp(prefix="kd_jax_tests_xla_cache_")
    os.environ[_CACHE_VARIABLE] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
  os.environ["KD_JAX_COMPILE_CACHE"] = directory  # runs' compile_cache_dir="auto" (kd_jax)
  settings = {"jax_compilation_cache_dir": directory,
              "jax_persistent_cache_min_compile_time_secs": 0}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)  # read by JAX in the subprocesses


_share_compilations()


def pytest_configure(config):
  """The default suite compiles with XLA's backend optimisations off
  (`jax_disable_most_optimizations`: LLVM at -O0 without its expensive passes). The HLO
  passes, fusion included, still run, and LLVM does not reorder float arithmetic without
  fast-math, so the programs compute what an optimised build does. Most of the suite's
  time is compiling small programs that then run for milliseconds (tests/README.md has
  the numbers). `-m slow` (long training runs, where run time counts) and
  KD_JAX_TEST_FULL_XLA=1 compile as users do."""
  default_suite = "not slow" in (config.option.markexpr or "")
  if default_suite and not os.environ.get("KD_JAX_TEST_FULL_XLA"):
    jax.config.update("jax_disable_most_optimizations", True)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # the main.py runs tests start


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  """`-n N` sends whole files to a worker unless --dist says otherwise: a file's module
  fixtures (trained runs, teachers, compiled steps) are then built once, not once per worker."""
  if getattr(config.option, "numprocesses", None) and config.option.dist == "no":
    config.option.dist = "loadfile"


@pytest.fixture(scope="module")
def dataset():
  """A small synthetic CIFAR-10-shaped dataset (64 train, 32 test images)."""
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  return data.load("cifar10", "synthetic", synthetic_train_size=64, synthetic_test_size=32)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A saved resnet8 teacher (random weights, seed 7) for 10 classes."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint, models  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("teacher"))
  checkpoint.save_teacher(models.create("resnet8", 10, rngs=nnx.Rngs(7)), path,
                          model_name="resnet8", num_classes=10)
  return path


@pytest.fixture(scope="module")
def tiny_kd_config(teacher_dir):
  """The KD smoke config on that teacher: batch 16, 2 epochs, logs every 2 steps."""
  from configs import cifar_kd  # pylint: disable=g-import-not-at-top
  config = cifar_kd.get_config("smoke")
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      "resnet8", teacher_dir, 0)
  config.batch_size, config.num_epochs, config.eval_batch_size, config.log_every_steps = 16, 2, 32, 2
  return config
