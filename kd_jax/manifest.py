"""Checksums of a checkpoint directory: written with it, checked before it is read.

Disks, copies and interrupted jobs damage files in ways a reader may not notice (bytes
changed, sizes kept); TensorFlow's tensor bundles checksum every tensor for that reason.
A manifest lists every file under a directory with its size and CRC-32 (zlib's, about
2.6 GB/s per core; the tensor bundles use CRC-32C), so damage is found before restoring,
never trained on. A CRC catches every burst of up to 32 changed bits and all but 2^-32 of
other damage; it is no defence against deliberate tampering, which is not the threat
here. SHA-256, measured too, took 5.6% of a res32x4 save against CRC-32's 1.2%
(benchmarks/RESULTS.md).

Run checkpoints carry it as an Orbax item (`ManifestHandler`), finalized after the other
items and before Orbax renames the step directory into place: a visible step always
has its manifest. A final student's or teacher's state directory gets `manifest.json`
inside it once the state is complete (before summary.json / teacher.json are written).
"""
from concurrent import futures
import json
import os
import zlib

from absl import logging
import jax
import orbax.checkpoint as ocp

from kd_jax.errors import UserError

FILENAME = "manifest.json"
_CHUNK = 1 << 22
# Orbax rewrites its own step metadata (commit timestamp) after items are finalized.
_UNLISTED = ("_CHECKPOINT_METADATA",)


def _crc32(path):
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return f"{crc:08x}"


def _files(root, skip=()):
  """Relative paths of the files under `root`, except the top-level names in `skip`."""
  found = []
  for directory, subdirs, files in os.walk(root):
    relative = os.path.relpath(directory, root)
    if relative == ".":
      subdirs[:] = [d for d in subdirs if d not in skip]
      files = [f for f in files if f not in skip and f not in _UNLISTED]
    found += [os.path.normpath(os.path.join(relative, f)) for f in files]
  return sorted(found)


def compute(root, skip=()):
  """{relative path: [size, crc32]} of every file under `root`, on a few threads (zlib
  releases the GIL)."""
  paths = _files(root, skip)
  with futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    digests = pool.map(lambda path: _crc32(os.path.join(root, path)), paths)
    return {path: [os.path.getsize(os.path.join(root, path)), digest]
            for path, digest in zip(paths, digests)}


def write(root, path, skip=()):
  """Writes the manifest of `root` (except the top-level `skip`) to `path`."""
  with open(path, "w") as f:
    json.dump({"crc32": compute(root, skip)}, f, indent=1, sort_keys=True)


def problem(root, path):
  """Why `root` does not match its manifest at `path` (None when it does)."""
  try:
    with open(path) as f:
      listed = json.load(f)["crc32"]
    listed = {name: (int(size), str(digest)) for name, (size, digest) in listed.items()}
  except FileNotFoundError:
    return "its checksum manifest is missing"
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return "its checksum manifest is damaged"
  for name, (size, digest) in sorted(listed.items()):
    file_path = os.path.join(root, name)
    if not os.path.isfile(file_path):
      return f"{name} is missing"
    if os.path.getsize(file_path) != size:
      return f"{name} has {os.path.getsize(file_path)} bytes, {size} were written"
    if _crc32(file_path) != digest:
      return f"{name} does not match its checksum"
  return None


# ------------------------------------------------------------ final student / teacher


def beside(state_dir):
  """The manifest of a standalone state directory (final_student/, a teacher's state/)."""
  return os.path.join(state_dir, FILENAME)


def seal(state_dir):
  """Writes the manifest of a complete state directory (process 0 only)."""
  if jax.process_index() == 0:
    write(state_dir, beside(state_dir) + ".tmp", skip=(FILENAME, FILENAME + ".tmp"))
    os.replace(beside(state_dir) + ".tmp", beside(state_dir))


def check(state_dir):
  """UserError naming `state_dir` when its files do not match its manifest. A directory
  written before manifests existed (none there) is read with a warning."""
  if not os.path.exists(beside(state_dir)):
    logging.warning("%s has no checksum manifest (written by an older kd_jax): read "
                    "unchecked", state_dir)
    return
  why = problem(state_dir, beside(state_dir))
  if why:
    raise UserError(f"{state_dir} is damaged ({why}); restore it from a copy or produce it "
                    "again")


# ------------------------------------------------------------ run checkpoints (Orbax item)


class ManifestHandler(ocp.AsyncCheckpointHandler):
  """An Orbax item with no data of its own: at finalize, after the items registered before
  it are complete and before the step directory is renamed into place, it writes the
  manifest of its siblings into its own directory."""

  async def async_save(self, directory, args=None):
    del directory, args
    return []

  def save(self, directory, args=None):
    del directory, args

  def finalize(self, directory):
    if jax.process_index() == 0:
      directory = str(directory)
      write(os.path.dirname(directory), os.path.join(directory, FILENAME),
            skip=(os.path.basename(directory), ITEM))

  def restore(self, directory, args=None):
    raise NotImplementedError("read with problem(); the manifest is not restored")


ITEM = "manifest"


@ocp.args.register_with_handler(ManifestHandler, for_save=True, for_restore=True)
class ManifestArgs(ocp.args.CheckpointArgs):
  """Args of the manifest item (it takes none; Orbax needs a registered class)."""


def step_problem(step_dir):
  """Why a run checkpoint's step directory fails its manifest (None when it passes). A
  step written before manifests existed (no manifest item) is left to Orbax, with a warning."""
  if not os.path.isdir(os.path.join(step_dir, ITEM)):
    logging.warning("%s has no checksum manifest (written by an older kd_jax): read "
                    "unchecked", step_dir)
    return None
  return problem(step_dir, os.path.join(step_dir, ITEM, FILENAME))
