"""The persistent compilation cache (kd_jax/compile_cache.py): a second identical run
compiles nothing; a corrupt or unusable cache directory costs a compile, never the run.
The whole-run tests are slow; the first test checks the same on one small program.

Compiles are counted with JAX's own monitoring events: every compile that consults the
persistent cache is a '/jax/compilation_cache/cache_misses' (compiled) or 'cache_hits'
(loaded from disk) event. `jax.clear_caches()` between runs drops the in-memory caches,
so a run in this process behaves as a fresh process would, short of importing JAX again.
"""
import collections
import os

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import compile_cache, train
from kd_jax.errors import UserError

EVENTS = collections.Counter()
monitoring.register_event_listener(lambda name, **kwargs: EVENTS.update([name]))
MISSES, HITS = "/jax/compilation_cache/cache_misses", "/jax/compilation_cache/cache_hits"


@pytest.fixture(autouse=True, scope="module")
def _restore_cache_setting():
  """These tests point the process-wide cache elsewhere: put it back afterwards."""
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)
  compilation_cache.reset_cache()


def _counted(compute, fresh_process=True):
  """(compute()'s result, cache misses, cache hits), JAX's in-memory caches dropped first
  unless `fresh_process` is False (then only programs `compute` builds anew consult the
  persistent cache: a new function's jit is traced, lowered and compiled again)."""
  if fresh_process:
    jax.clear_caches()
  before = EVENTS.copy()
  result = compute()
  return result, EVENTS[MISSES] - before[MISSES], EVENTS[HITS] - before[HITS]


def _conv_step():
  """A small jitted conv + loss + gradient: the kind of program a run compiles. A new
  function each call, so its jit compiles (or loads) again; inputs from NumPy (no eager
  op of its own)."""
  def loss(kernel, images):
    out = jax.lax.conv_general_dilated(images, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jax.nn.relu(out) ** 2)
  kernel = np.linspace(-1, 1, 3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)
  images = np.cos(np.arange(2 * 8 * 8 * 3, dtype=np.float32)).reshape(2, 8, 8, 3)
  return np.asarray(jax.jit(jax.grad(loss))(kernel, images))


def test_cache_hits_corrupt_entries_and_unusable_directories(tmp_path):
  """The fast check of the run-level tests below, on one small program. JAX's in-memory
  caches are kept (jax.clear_caches() in a worker of the suite made every later test of
  that worker trace and compile again): the program is a new function each time."""
  counted = lambda: _counted(_conv_step, fresh_process=False)
  assert compile_cache.enable(str(tmp_path / "xla")) == str(tmp_path / "xla")
  cold, misses, hits = counted()
  assert misses == 1 and hits == 0 and len(os.listdir(tmp_path / "xla")) >= misses
  warm, misses, hits = counted()
  assert misses == 0 and hits == 1
  np.testing.assert_array_equal(warm, cold)
  for entry in (tmp_path / "xla").iterdir():
    entry.write_bytes(b"not an executable")
  with pytest.warns(UserWarning, match="Error reading persistent compilation cache"):
    again, misses, hits = counted()
  assert misses == 1 and hits == 0
  np.testing.assert_array_equal(again, cold)
  blocker = tmp_path / "file"
  blocker.write_text("")  # a file where the directory should be: no one can create it
  assert compile_cache.enable(str(blocker / "xla")) is None
  assert jax.config.jax_compilation_cache_dir is None
  uncached, misses, hits = counted()
  assert misses == 0 and hits == 0
  np.testing.assert_array_equal(uncached, cold)


def _run(config, workdir, loaded, cache_dir):
  """A fresh-process-like run of `config` in `workdir`: (result, misses, hits)."""
  config = config.copy_and_resolve_references()
  config.compile_cache_dir, config.num_epochs = str(cache_dir), 1
  return _counted(lambda: train.train_and_evaluate(config, str(workdir), loaded))


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory, tiny_kd_config, dataset):
  """One run that fills an empty cache directory: (root, its result). JAX's cache key
  includes the directory, so the tests below reuse it in place: warm, then corrupt."""
  root = tmp_path_factory.mktemp("compile_cache")
  result, misses, hits = _run(tiny_kd_config, root / "cold", dataset, root / "xla")
  assert misses > 0 and hits == 0  # everything compiled, and written
  assert len(os.listdir(root / "xla")) >= misses
  return root, result


@pytest.mark.slow
def test_second_identical_run_compiles_nothing(cold_run, tiny_kd_config, dataset):
  root, cold = cold_run
  warm, misses, hits = _run(tiny_kd_config, root / "warm", dataset, root / "xla")
  assert misses == 0 and hits > 0
  assert warm.best_top1 == cold.best_top1  # the same executables: the same run


@pytest.mark.slow
def test_corrupt_entries_cost_a_compile_not_the_run(cold_run, tiny_kd_config, dataset):
  root, cold = cold_run
  for entry in (root / "xla").iterdir():
    entry.write_bytes(b"not an executable")
  with pytest.warns(UserWarning, match="Error reading persistent compilation cache"):
    result, misses, hits = _run(tiny_kd_config, root / "corrupt", dataset, root / "xla")
  assert misses > 0 and hits == 0 and result.best_top1 == cold.best_top1


@pytest.mark.slow
def test_unusable_directory_costs_a_compile_not_the_run(tiny_kd_config, dataset, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result, misses, hits = _run(tiny_kd_config, tmp_path / "run", dataset, blocker / "xla")
  assert result.finished and misses == 0 and hits == 0  # compiled without any cache
  assert jax.config.jax_compilation_cache_dir is None


def test_auto_is_the_environment_variable_else_the_home_cache(monkeypatch):
  monkeypatch.setenv(compile_cache.ENV, "/tmp/kd_jax_cache_here")
  assert compile_cache.resolve("auto") == "/tmp/kd_jax_cache_here"
  monkeypatch.delenv(compile_cache.ENV)
  assert compile_cache.resolve("auto") == os.path.expanduser("~/.cache/kd_jax/xla")
  assert compile_cache.resolve("off") is None
  assert compile_cache.resolve("rel") == os.path.abspath("rel")


def test_cache_and_profile_settings_do_not_make_another_experiment(tmp_path):
  """A resumed run may move its cache or take a profile; any other field is refused.
  (Only the config is compared: the KD smoke config, no teacher saved for it.)"""
  from configs import cifar_kd  # pylint: disable=g-import-not-at-top
  recorded = cifar_kd.get_config("smoke")
  (tmp_path / "config.json").write_text(recorded.to_json_best_effort())
  config = recorded.copy_and_resolve_references()
  config.compile_cache_dir, config.profile_steps = "off", (3, 4)
  train._check_config_matches(config, str(tmp_path))  # pylint: disable=protected-access
  config.optim.lr = 0.5
  with pytest.raises(UserError, match="optim.lr"):
    train._check_config_matches(config, str(tmp_path))  # pylint: disable=protected-access
