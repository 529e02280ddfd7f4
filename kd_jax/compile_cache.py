"""JAX's persistent compilation cache, on by default: a resumed run, the next seed or the
same config on another workdir loads its compiled functions from disk instead of
compiling them again (minutes for DeiT-B + RegNetY-16GF on a TPU).

config.compile_cache_dir: "auto" (the default) is $KD_JAX_COMPILE_CACHE, else
~/.cache/kd_jax/xla, shared by every run of the machine; any other value is the directory;
"off" turns the cache off. Everything a run compiles is cached (no minimum compile time),
so a second identical run compiles nothing. The cache is only ever a saving: a directory
that cannot be created or written is logged and the run compiles without it; an entry JAX
cannot read (corrupt, truncated) is a warning from JAX and a compile, never a failed run.
Only process 0 writes (JAX's rule); the cache is trusted code, so keep it private.
"""
import os
import tempfile

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache

ENV = "KD_JAX_COMPILE_CACHE"
DEFAULT = os.path.join("~", ".cache", "kd_jax", "xla")
OFF = "off"


def resolve(setting):
  """The directory config.compile_cache_dir names, or None when it is "off"."""
  if setting == OFF:
    return None
  if setting == "auto":
    setting = os.environ.get(ENV) or DEFAULT
  return os.path.abspath(os.path.expanduser(setting))


def _writable(path):
  """None if `path` can hold cache entries, else why not."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    return error.strerror or str(error)
  return None


def enable(setting):
  """Points JAX's persistent cache at config.compile_cache_dir (or turns it off); returns
  the directory in use, or None. Call before the run compiles anything."""
  path = resolve(setting)
  if path is not None:
    problem = _writable(path)
    if problem:
      logging.warning("compilation cache %s unusable (%s): compiling without it", path, problem)
      path = None
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()  # JAX opens its cache once per process: reopen here
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if path is None:
    logging.info("compilation cache off")
  else:
    logging.info("compilation cache %s (config.compile_cache_dir; 'off' turns it off)", path)
  return path
