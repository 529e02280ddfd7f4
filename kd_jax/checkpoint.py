"""Orbax checkpoints: the run's train state (exact resume) and frozen teachers.

A teacher comes from one of three places, told apart by what the path holds:
  * a PyTorch `.pth`/`.pt` file (mdistiller/CRD/torchvision/timm) or a `.safetensors`
    file (timm / Hugging Face hub), read without torch;
  * a kd_jax teacher directory (`teacher.json` + `state/`), written by `save_teacher`
    or `python -m kd_jax.convert_teacher`;
  * a kd_jax run's workdir (e.g. a `cifar_ce` teacher run): its final student.
"""
import functools
import json
import os
import time

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp

from kd_jax import manifest, models, run_files
from kd_jax.errors import UserError

TEACHER_INFO = "teacher.json"
RUN_INFO = "run.json"  # written by train.py: the student's model name and class count
_INFO_REMEDY = "restore it from a copy, or produce that teacher again"


@functools.cache
def _orbax_for_this_backend():
  """Orbax's replica-parallel save off on CPU devices, as Orbax itself does on GPU (once
  per process: Orbax logs each registration).

  Replica-parallel saving has each device copy out a slice of every replicated array, an
  eager `slice` compiled once per array shape and device at the first save (96 compiles
  for a micro DeiT on 8 CPU devices). CPU devices share the host's memory, so there is no
  transfer to split: on CPU it only costs those compiles. Same files, same restore.
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def _abstract_model(model_name, num_classes, dtype, options=None):
  return nnx.eval_shape(lambda: models.create(model_name, num_classes, rngs=nnx.Rngs(0),
                                              dtype=dtype, **(options or {})))


def _restore_model(state_dir, model_name, num_classes, dtype, source, options=None):
  """Restores a model's full nnx state (params + BatchNorm statistics) from `state_dir`;
  `options`: the model's settings (a detector's DetectorConfig fields)."""
  abstract = _abstract_model(model_name, num_classes, dtype, options)
  graphdef, abstract_state = nnx.split(abstract)
  # Replicated over every device of every process: a multi-host job restores the same
  # teacher everywhere (Orbax needs the target sharding to restore across processes).
  replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P())
  abstract_state = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
      abstract_state)
  manifest.check(state_dir)
  try:
    state = ocp.StandardCheckpointer().restore(os.path.abspath(state_dir), abstract_state)
  except (ValueError, KeyError, FileNotFoundError) as error:
    raise UserError(f"{source} does not hold a {model_name} with {num_classes} classes "
                    f"({str(error).splitlines()[0][:200]})") from None
  return nnx.merge(graphdef, state)


def save_teacher(model, directory, *, model_name, num_classes):
  """Writes `model` (params + BatchNorm statistics) as a kd_jax teacher checkpoint."""
  directory = os.path.abspath(directory)
  _orbax_for_this_backend()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, "state"), nnx.state(model), force=True)
  checkpointer.wait_until_finished()
  manifest.seal(os.path.join(directory, "state"))
  run_files.write_text(os.path.join(directory, TEACHER_INFO),
                       json.dumps({"model": model_name, "num_classes": num_classes}))


def load_teacher(path, model_name, num_classes, *, dtype=jnp.float32, options=None):
  """Loads the frozen teacher from a .pth/.safetensors file (a detector's: a detectron2
  .pkl), a teacher directory or a run's workdir.

  The stored architecture and class count must match the config's; otherwise a
  UserError says which differs.
  """
  if not os.path.exists(path):
    raise UserError(f"teacher checkpoint not found: {path} (config.teacher.checkpoint)")
  if os.path.isfile(path) and model_name in models.DETECTORS:
    # A detectron2 model-zoo .pkl (or .pth), by detectron2 name (kd_jax.detection.weights).
    from kd_jax.detection import faster_rcnn  # pylint: disable=g-import-not-at-top
    return faster_rcnn.load_weights(_abstract_model(model_name, num_classes, dtype, options),
                                    path)
  if os.path.isfile(path):
    from kd_jax.torch_checkpoint import load_torch_teacher  # pylint: disable=g-import-not-at-top
    return load_torch_teacher(path, model_name, num_classes, dtype=dtype)
  for info_name, state_dir in ((TEACHER_INFO, "state"), (RUN_INFO, "final_student")):
    info_path = os.path.join(path, info_name)
    if os.path.exists(info_path):
      info = run_files.fields(info_path, run_files.read_json(info_path, _INFO_REMEDY),
                              ("model", "num_classes"), _INFO_REMEDY)
      if (info["model"], info["num_classes"]) != (model_name, num_classes):
        raise UserError(f"teacher at {path} is {info['model']} with {info['num_classes']} "
                        f"classes, but the config asks for {model_name} with {num_classes}")
      if not os.path.isdir(os.path.join(path, state_dir)):
        raise UserError(f"teacher run at {path} has not finished (no {state_dir}/)")
      return _restore_model(os.path.join(path, state_dir), model_name, num_classes, dtype, path,
                            options)
  raise UserError(f"{path} is neither a .pth file, a kd_jax teacher directory "
                  f"({TEACHER_INFO}) nor a finished kd_jax run ({RUN_INFO})")


def save_final_student(model, workdir):
  """The end-of-run student in the teacher layout, so the run can teach another (without
  the RNG state of its training-only dropout / drop-path, which a teacher is built without)."""
  _orbax_for_this_backend()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(os.path.abspath(workdir), "final_student"),
                    nnx.state(model, nnx.Not(nnx.RngState)), force=True)
  checkpointer.wait_until_finished()
  manifest.seal(os.path.join(os.path.abspath(workdir), "final_student"))


class RunCheckpoints:
  """Orbax CheckpointManager for the train state + a JSON record of progress + checksums.

  Saved every epoch (async) and at the end; the newest `keep` are kept. Orbax writes
  to a temporary directory and renames it when complete, so an interrupted save never
  shadows the previous checkpoint; the checksum manifest (kd_jax.manifest) is written
  inside it before the rename. A step that fails its checksums or that Orbax cannot read
  is skipped on restore (moved to `checkpoints_damaged/`), and the run resumes from the
  newest intact one.
  """

  def __init__(self, workdir, keep=2):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    _orbax_for_this_backend()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        # In this order: the manifest item is finalized after the items it checksums.
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler(),
                       manifest.ITEM: manifest.ManifestHandler()})

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, train_state, progress):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state), progress=ocp.args.JsonSave(progress),
        **{manifest.ITEM: manifest.ManifestArgs()}))

  def restore(self, abstract_train_state, at_most=None):
    """(train_state, progress, step) of the newest intact checkpoint at or before step
    `at_most` (default: any). Damaged steps are skipped with a warning naming them; every
    step newer than the one restored is set aside, so the resumed run can save again."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    tried = [step for step in steps if at_most is None or step <= at_most]
    for step in tried:
      step_dir = os.path.join(self.directory, str(step))
      why = manifest.step_problem(step_dir)
      if why is None:
        try:
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_train_state),
              progress=ocp.args.JsonRestore()))
        except Exception as error:  # pylint: disable=broad-except  # Orbax raises anything
          why = f"Orbax cannot read it: {type(error).__name__} {str(error)[:200]!r}"
        else:
          self._set_aside([s for s in steps if s > step])
          return restored.state, restored.progress, step
      logging.warning("checkpoint %s is damaged (%s): skipped", step_dir, why)
    raise UserError(f"no intact checkpoint in {self.directory} (steps "
                    f"{', '.join(map(str, sorted(tried)))} are damaged, see the warnings "
                    "above); nothing was deleted: restore them from a copy, or --overwrite "
                    "to start the run again")

  def _set_aside(self, steps):
    """Moves the (damaged or superseded) `steps` out of Orbax's sight, keeping their files."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = os.path.join(self.workdir, "checkpoints_damaged")
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(os.path.join(self.directory, str(step)), target)
        logging.warning("moved checkpoint %d to %s (the run resumes from an older one)",
                        step, target)
    if jax.process_count() > 1:  # every host sees the moves before it looks again
      multihost_utils.sync_global_devices("kd_jax_checkpoints_set_aside")
    self.manager.reload()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of `tree`, the restore target for Orbax."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
