"""Orbax checkpoints: the run's train state (exact resume) and frozen teachers.

A teacher comes from one of three places, told apart by what the path holds:
  * a PyTorch `.pth`/`.pt` file (mdistiller/CRD/torchvision/timm) or a `.safetensors`
    file (timm / Hugging Face hub), read without torch;
  * a kd_jax teacher directory (`teacher.json` + `state/`), written by `save_teacher`
    or `python -m kd_jax.convert_teacher`;
  * a kd_jax run's workdir (e.g. a `cifar_ce` teacher run): its final student.
"""
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp

from kd_jax import models
from kd_jax.errors import UserError

TEACHER_INFO = "teacher.json"
RUN_INFO = "run.json"  # written by train.py: the student's model name and class count


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
  try:
    state = ocp.StandardCheckpointer().restore(os.path.abspath(state_dir), abstract_state)
  except (ValueError, KeyError, FileNotFoundError) as error:
    raise UserError(f"{source} does not hold a {model_name} with {num_classes} classes "
                    f"({str(error).splitlines()[0][:200]})") from None
  return nnx.merge(graphdef, state)


def save_teacher(model, directory, *, model_name, num_classes):
  """Writes `model` (params + BatchNorm statistics) as a kd_jax teacher checkpoint."""
  directory = os.path.abspath(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, "state"), nnx.state(model), force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, TEACHER_INFO), "w") as f:
    json.dump({"model": model_name, "num_classes": num_classes}, f)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def load_teacher(path, model_name, num_classes, *, dtype=jnp.float32, options=None):
  """Loads the frozen teacher from a .pth/.safetensors file, a teacher directory or a run's
  workdir.

  The stored architecture and class count must match the config's; otherwise a
  UserError says which differs.
  """
  if not os.path.exists(path):
    raise UserError(f"teacher checkpoint not found: {path} (config.teacher.checkpoint)")
  if os.path.isfile(path):
    from kd_jax.torch_checkpoint import load_torch_teacher  # pylint: disable=g-import-not-at-top
    return load_torch_teacher(path, model_name, num_classes, dtype=dtype)
  for info_name, state_dir in ((TEACHER_INFO, "state"), (RUN_INFO, "final_student")):
    info_path = os.path.join(path, info_name)
    if os.path.exists(info_path):
      info = _read_json(info_path)
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
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(os.path.abspath(workdir), "final_student"),
                    nnx.state(model, nnx.Not(nnx.RngState)), force=True)
  checkpointer.wait_until_finished()


class RunCheckpoints:
  """Orbax CheckpointManager for the train state + a JSON record of progress.

  Saved every epoch (async) and at the end; the newest `keep` are kept. Orbax writes
  to a temporary directory and renames it when complete, so an interrupted save never
  shadows the previous checkpoint.
  """

  def __init__(self, workdir, keep=2):
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, train_state, progress):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state), progress=ocp.args.JsonSave(progress)))

  def restore(self, abstract_train_state):
    """Returns (train_state, progress) of the newest complete checkpoint."""
    step = self.manager.latest_step()
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state), progress=ocp.args.JsonRestore()))
    return restored.state, restored.progress

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of `tree`, the restore target for Orbax."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
