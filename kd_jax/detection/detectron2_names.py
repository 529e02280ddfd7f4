"""detectron2 state-dict names <-> the detector's variables (checkpoints of METHODS.md 13).

Modules carry detectron2's attribute names (backbone.bottom_up.res2.0.conv1.norm,
backbone.fpn_lateral2, proposal_generator.rpn_head.conv, roi_heads.box_head.fc1,
roi_heads.box_predictor.cls_score), so a name is the variable's path joined by dots with
the leaf `kernel` renamed `weight`. Layouts: Conv2d weight (O, I/groups, kh, kw) <->
kernel (kh, kw, I/groups, O); Linear weight (out, in) <-> kernel (in, out); everything
else (biases, FrozenBN weight/bias/running_mean/running_var) as is. The box head's fc1
takes detectron2's (C, 7, 7) flattening order because heads.BoxHead flattens NCHW.
"""
import numpy as np
import jax.numpy as jnp
from flax import nnx

from kd_jax.errors import UserError

_LEAF_NAMES = {'kernel': 'weight'}
# Buffers that are no parameters: old model-zoo files carry them, detectron2 skips them.
_IGNORED_SUFFIXES = ('num_batches_tracked',)
_IGNORED_PREFIXES = ('pixel_mean', 'pixel_std', 'proposal_generator.anchor_generator.')


def detectron2_names(model, prefix=''):
  """{detectron2 name: variable path} for every variable (Param or Frozen) of `model`."""
  names = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable):
      leaf = _LEAF_NAMES.get(path[-1], path[-1])
      names[prefix + '.'.join(str(part) for part in path[:-1] + (leaf,))] = path
  return names


def _relayout(array, conv_axes):
  """float32 `array` with a 4-d (conv) kernel's axes permuted by `conv_axes` and a 2-d
  (linear) one transposed; other shapes as they are."""
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    return array.transpose(conv_axes)
  if array.ndim == 2:
    return array.T
  return array


def to_model_layout(array):
  """A detectron2 (PyTorch-layout) tensor in this package's layout."""
  return _relayout(array, (2, 3, 1, 0))


def to_torch_layout(array):
  """A variable of this package's layout as detectron2 (PyTorch) holds it."""
  return _relayout(array, (3, 2, 0, 1))


def detectron2_state(model, prefix=''):
  """{detectron2 name: ndarray in PyTorch layout} of every variable of `model`: what
  load_detectron2_state reads back."""
  variables = dict(nnx.iter_graph(model))
  return {name: to_torch_layout(variables[path].get_value())
          for name, path in detectron2_names(model, prefix).items()}


def _identity_default(name, state):
  """FrozenBatchNorm2d._load_from_state_dict: checkpoints without running statistics
  (Caffe2-converted ones) get running_mean 0 and running_var 1."""
  stem, _, leaf = name.rpartition('.')
  if leaf in ('running_mean', 'running_var') and f'{stem}.weight' in state:
    size = np.shape(state[f'{stem}.weight'])
    return np.zeros(size, np.float32) if leaf == 'running_mean' else np.ones(size, np.float32)
  return None


def load_detectron2_state(model, state, *, prefix='', source='detectron2 weights'):
  """Copies {detectron2 name: ndarray} into `model` in place and returns it.

  `model` is the module named `prefix` in detectron2's tree ('' for the whole detector,
  'backbone.bottom_up.' to start a detector from ImageNet weights). Every variable must be
  covered and every tensor under `prefix` used (a wrong architecture -> one UserError line
  naming the tensor and `source`). Works on an abstract model (nnx.eval_shape): nothing
  needs initialising before a load.
  """
  names = detectron2_names(model, prefix)
  variables = dict(nnx.iter_graph(model))
  for name, path in names.items():
    original = state.get(name)
    if original is None:
      original = _identity_default(name, state)
    if original is None:
      raise UserError(f"{source}: tensor {name} is missing")
    array = to_model_layout(original)
    variable = variables[path]
    if array.shape != variable.shape:
      raise UserError(f"{source}: tensor {name} has shape {tuple(np.shape(original))}, "
                      f"the model needs {torch_shape(variable.shape)}")
    variable.set_value(jnp.asarray(array))
  unused = sorted(name for name in state if name.startswith(prefix) and name not in names
                  and not name.endswith(_IGNORED_SUFFIXES)
                  and not name.startswith(_IGNORED_PREFIXES))
  if unused:
    raise UserError(f"{source}: tensor {unused[0]} is not in the model"
                    + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""))
  return model


def torch_shape(shape):
  """The PyTorch-layout shape of a variable of this package's `shape`."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)
