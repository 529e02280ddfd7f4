"""PyTorch (mdistiller / CRD / torchvision) teacher checkpoints, read without torch.

`read_state_dict` parses a `.pth`/`.pt` file with a restricted unpickler, so a checkpoint
cannot run code: the only globals it resolves are torch's tensor and storage rebuilders
(replaced by our own) and OrderedDict; any other global becomes an inert placeholder, and
the file is refused if one sits where the weights are. Both the
zip format (torch >= 1.6) and the legacy format (older `torch.save`, and
`_use_new_zipfile_serialization=False`) are read; the pre-1.0 tar format is refused.

`load_torch_teacher` builds the kd_jax model and copies weights and BatchNorm running
statistics into it. kd_jax module attributes mirror the PyTorch state-dict names (see
kd_jax/models/__init__.py), so the mapping is mechanical per layer type:

  Conv2d  weight (O, I/groups, kh, kw)         -> nnx.Conv kernel (kh, kw, I/groups, O)
  Linear  weight (out, in)                     -> nnx.Linear kernel (in, out)
  BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var
  LayerNorm weight/bias                        -> scale/bias
  a bare nn.Parameter (ViT cls_token, pos_embed) -> the nnx.Param of the same path, as is
  `num_batches_tracked` is ignored.
The same loader takes timm's `.safetensors` files (kd_jax.safetensors_reader): only the
container differs, the keys are the state dict's.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from kd_jax.errors import UserError

# Storage class names torch pickles, and the element type of each.
_STORAGE_DTYPES = {
    'FloatStorage': np.dtype(np.float32),
    'DoubleStorage': np.dtype(np.float64),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
    'UntypedStorage': np.dtype(np.uint8),
}

# First pickled value of a legacy (non-zip) torch.save file.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# Keys that carry no weights (BatchNorm's step counter).
_IGNORED_SUFFIXES = ('num_batches_tracked',)


class _Refused(Exception):
  """Raised inside unpickling; becomes a UserError naming the file."""


class _Sealed:
  """Base of the unpickler's stand-ins: pickle's BUILD opcode may not alter them."""

  __slots__ = ()

  def __setstate__(self, state):
    raise _Refused('a pickle that modifies a tensor or storage object')


class _StorageType(_Sealed):
  """Stand-in for torch.FloatStorage & co.: only its element dtype matters."""

  __slots__ = ('dtype',)

  def __init__(self, name):
    self.dtype = _STORAGE_DTYPES[name]


class _StorageRef(_Sealed):
  """A storage named in the pickle; its bytes are fetched only when a tensor needs them."""

  __slots__ = ('key', 'dtype', 'numel', 'view')

  def __init__(self, key, dtype, numel, view=None):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.view = view  # Legacy storage view: (element offset, numel) into `key`, or None.


class _TensorRef(_Sealed):
  """A tensor named in the pickle: storage + offset/size/stride, materialised later."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    self.storage = storage
    self.offset = offset
    self.size = size
    self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Replaces torch._utils._rebuild_tensor_v2; the grad flags are dropped."""
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  """Replaces torch._utils._rebuild_tensor (files from torch < 1.0)."""
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  """Replaces torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
  del requires_grad, backward_hooks, state
  return data


class _Foreign:
  """Inert stand-in for a global outside the allow-list (e.g. a saved argparse.Namespace).

  The real global is never imported or called: its arguments and state are dropped.
  Checkpoints often carry such extras next to the weights; only where the weights
  should be does one make the file unreadable.
  """

  qualname = '?'

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    return super().__new__(cls)

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state

  def __setitem__(self, key, value):
    del key, value

  def append(self, value):
    del value

  def extend(self, values):
    del values


def _resolve_global(module, name):
  """Maps a pickled global to our stand-in; nothing outside torch's tensor path runs."""
  if (module, name) == ('collections', 'OrderedDict'):
    return collections.OrderedDict
  if module == 'torch._utils':
    functions = {
        '_rebuild_tensor_v2': _rebuild_tensor_v2,
        '_rebuild_tensor': _rebuild_tensor,
        '_rebuild_parameter': _rebuild_parameter,
        '_rebuild_parameter_with_state': _rebuild_parameter,
    }
    if name in functions:
      return functions[name]
  if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
    return _StorageType(name)
  return type('Foreign', (_Foreign,), {'qualname': f'{module}.{name}'})


class _Unpickler(pickle.Unpickler):
  """Unpickler with an allow-list of globals and a storage callback."""

  def __init__(self, file, persistent_load):
    super().__init__(file)
    self._persistent_load = persistent_load

  def find_class(self, module, name):
    return _resolve_global(module, name)

  def persistent_load(self, pid):
    return self._persistent_load(pid)


def _storage_pid(pid):
  """Unpacks a storage persistent id ('storage', type, key, location, numel[, view])."""
  if not isinstance(pid, tuple) or len(pid) not in (5, 6):
    raise _Refused(f'an unknown persistent id {pid!r:.80}')
  kind, storage_type, key, _, numel = pid[:5]
  if kind not in ('storage', b'storage') or not isinstance(storage_type, _StorageType):
    raise _Refused(f'an unknown persistent id {pid!r:.80}')
  if not isinstance(numel, int) or numel < 0:
    raise _Refused(f'a storage with bad size {numel!r}')
  view = pid[5] if len(pid) == 6 else None
  return storage_type.dtype, str(key), numel, view


def _is_index(value):
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _materialise(tensor, fetch):
  """Builds a contiguous NumPy array from a tensor's storage, checking every bound.

  The checks matter: as_strided reads raw memory, so offset, size and stride must stay
  inside the storage whatever the file says.
  """
  storage, offset = tensor.storage, tensor.offset
  if not isinstance(storage, _StorageRef):
    raise _Refused('a tensor whose storage is not a saved storage')
  if not (isinstance(tensor.size, tuple) and isinstance(tensor.stride, tuple)
          and len(tensor.size) == len(tensor.stride)
          and all(map(_is_index, (offset, *tensor.size, *tensor.stride)))):
    raise _Refused('a tensor with a malformed size, stride or offset')
  data = fetch(storage)
  if storage.view is not None:
    view_offset, view_numel = storage.view
    if not (_is_index(view_offset) and _is_index(view_numel)):
      raise _Refused('a malformed storage view')
    data = data[view_offset:view_offset + view_numel]
  if len(data) < storage.numel:
    raise _Refused(f'storage {storage.key} is shorter than its declared size')
  if 0 in tensor.size:
    return np.zeros(tensor.size, data.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if last >= len(data):
    raise _Refused(f'a tensor reaches past the end of storage {storage.key}')
  strides = tuple(s * data.itemsize for s in tensor.stride)
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape=tensor.size, strides=strides, writeable=False)
  return np.array(view, order='C')


def _native(raw, dtype, little_endian):
  """Bytes of one storage as a 1-D array in native byte order."""
  if dtype.itemsize > 1:
    dtype = dtype.newbyteorder('<' if little_endian else '>')
  array = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
  return array.astype(array.dtype.newbyteorder('='), copy=False)


def _load_zip(file):
  """Unpickles a zip-format checkpoint; returns (object, fetch storage)."""
  with zipfile.ZipFile(file) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if not pickles:
      raise _Refused('a zip file without data.pkl (a TorchScript archive?)')
    prefix = pickles[0][:-len('data.pkl')]
    little_endian = True
    if prefix + 'byteorder' in names:
      little_endian = archive.read(prefix + 'byteorder').strip() == b'little'
    storages = {}

    def persistent_load(pid):
      dtype, key, numel, _ = _storage_pid(pid)
      if key not in storages:
        storages[key] = _StorageRef(key, dtype, numel)
      return storages[key]

    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), persistent_load).load()
    cache = {}

    def fetch(storage):
      if storage.key not in cache:
        name = f'{prefix}data/{storage.key}'
        if name not in names:
          raise _Refused(f'storage {storage.key} is missing from the archive')
        cache[storage.key] = _native(archive.read(name), storage.dtype, little_endian)
      return cache[storage.key]

    return _resolve(obj, fetch)


def _load_legacy(file):
  """Unpickles a legacy-format checkpoint: header pickles, object, keys, raw storages."""

  def no_storage(pid):
    raise _Refused(f'an unexpected persistent id {pid!r:.80}')

  magic = _Unpickler(file, no_storage).load()
  if magic != _LEGACY_MAGIC:
    raise _Refused('not a PyTorch checkpoint (bad magic number)')
  protocol = _Unpickler(file, no_storage).load()
  if protocol != _LEGACY_PROTOCOL:
    raise _Refused(f'unsupported legacy protocol {protocol!r}')
  sys_info = _Unpickler(file, no_storage).load()
  little_endian = bool(sys_info.get('little_endian', True))
  storages = {}

  def persistent_load(pid):
    if isinstance(pid, tuple) and pid and pid[0] in ('module', b'module'):
      raise _Refused('a whole pickled nn.Module (save model.state_dict() instead)')
    dtype, key, numel, view = _storage_pid(pid)
    if key not in storages:
      storages[key] = _StorageRef(key, dtype, numel)
    if view is None:
      return storages[key]
    _, view_offset, view_numel = view
    return _StorageRef(key, dtype, view_numel, view=(view_offset, view_numel))

  obj = _Unpickler(file, persistent_load).load()
  keys = _Unpickler(file, no_storage).load()
  data = {}
  for key in keys:
    key = str(key)
    if key not in storages:
      raise _Refused(f'storage {key} is not referenced by the pickle')
    header = file.read(8)
    if len(header) != 8:
      raise _Refused('the file ends inside the storage data (truncated?)')
    (numel,) = struct.unpack('<q' if little_endian else '>q', header)
    dtype = storages[key].dtype
    raw = file.read(numel * dtype.itemsize)
    if numel < 0 or len(raw) != numel * dtype.itemsize:
      raise _Refused('the file ends inside the storage data (truncated?)')
    data[key] = _native(raw, dtype, little_endian)

  def fetch(storage):
    if storage.key not in data:
      raise _Refused(f'storage {storage.key} has no data')
    return data[storage.key]

  return _resolve(obj, fetch)


def _describe(value):
  if isinstance(value, _Foreign):
    return f'a pickled {value.qualname} object'
  return f'a {type(value).__name__}'


def _resolve(obj, fetch):
  """Picks the state dict out of the checkpoint and materialises its tensors."""
  advice = '(expected a state dict, or a dict with one under "model" or "state_dict")'
  if not isinstance(obj, dict):
    raise _Refused(f'it holds {_describe(obj)}, not a state dict {advice}')
  state = obj
  for entry in ('model', 'state_dict'):
    if entry in obj and not isinstance(obj[entry], _TensorRef):
      state = obj[entry]
      if not isinstance(state, dict):
        raise _Refused(f'its {entry!r} entry is {_describe(state)}, not a state dict')
      break
  tensors = {}
  for key, value in state.items():
    if not isinstance(key, str) or not isinstance(value, _TensorRef):
      raise _Refused(f'entry {key!r:.60} is {_describe(value)}, not a tensor {advice}')
    tensors[key] = _materialise(value, fetch)
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  return tensors


def read_state_dict(path):
  """Reads a PyTorch checkpoint's state dict as {key: np.ndarray}, without torch.

  Accepts a bare state dict, {'model': state_dict} (mdistiller/CRD) or
  {'state_dict': state_dict}; a `module.` prefix (DataParallel) is stripped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'PyTorch checkpoint {path} does not exist')
  try:
    with open(path, 'rb') as file:
      if zipfile.is_zipfile(file):
        file.seek(0)
        return _load_zip(file)
      file.seek(0)
      if _is_tar(file):
        raise _Refused('the pre-1.0 tar checkpoint format is not supported; re-save '
                       'it with a newer torch.save')
      file.seek(0)
      return _load_legacy(file)
  except _Refused as error:
    raise UserError(f'cannot read PyTorch checkpoint {path}: {error}') from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
          IndexError, AttributeError, zipfile.BadZipFile, OSError,
          UnicodeDecodeError, struct.error) as error:
    raise UserError(f'cannot read PyTorch checkpoint {path}: not a readable torch.save '
                    f'file ({type(error).__name__}: {error})') from None


def _is_tar(file):
  header = file.read(512)
  return len(header) == 512 and header[257:262] == b'ustar'


# Per layer type: (torch name, kd_jax attribute, axes taking the torch array to kd_jax).
_CONV_FIELDS = (('weight', 'kernel', (2, 3, 1, 0)), ('bias', 'bias', None))
_LINEAR_FIELDS = (('weight', 'kernel', (1, 0)), ('bias', 'bias', None))
_BN_FIELDS = (('weight', 'scale', None), ('bias', 'bias', None),
              ('running_mean', 'mean', None), ('running_var', 'var', None))
_LN_FIELDS = (('weight', 'scale', None), ('bias', 'bias', None))


class _Entry:
  """One kd_jax weight and the torch key it comes from."""

  def __init__(self, key, variable, axes, is_linear):
    self.key = key
    self.variable = variable
    self.axes = axes
    self.is_linear = is_linear

  def torch_shape(self):
    """The shape the torch tensor must have: the kd_jax shape with `axes` undone."""
    shape = tuple(self.variable.shape)
    if self.axes is None:
      return shape
    torch_shape = [0] * len(shape)
    for flax_axis, torch_axis in enumerate(self.axes):
      torch_shape[torch_axis] = shape[flax_axis]
    return tuple(torch_shape)

  def to_flax(self, value):
    return value if self.axes is None else np.transpose(value, self.axes)


def _layer_fields(node):
  """The torch fields of a Conv/Linear/BatchNorm/LayerNorm node, else None."""
  for layer_type, fields in ((nnx.Conv, _CONV_FIELDS), (nnx.Linear, _LINEAR_FIELDS),
                             (nnx.BatchNorm, _BN_FIELDS), (nnx.LayerNorm, _LN_FIELDS)):
    if isinstance(node, layer_type):
      return fields
  return None


def _is_bare_parameter(path, node, nodes):
  """A Param held directly by a kd_jax module (ViT's cls_token), not by a layer."""
  parent = nodes.get(tuple(path[:-1]))
  return (isinstance(node, nnx.Param) and parent is not None
          and _layer_fields(parent) is None
          and type(parent).__module__.startswith('kd_jax.'))


def _expected_entries(model):
  """An _Entry for every Conv/Linear/BatchNorm/LayerNorm weight (key = module path +
  torch name) and every bare Param (key = its path)."""
  entries = []
  graph = list(nnx.iter_graph(model))
  nodes = {tuple(path): node for path, node in graph}
  for path, node in graph:
    if _is_bare_parameter(path, node, nodes):
      entries.append(_Entry('.'.join(str(p) for p in path), node, None, False))
      continue
    fields = _layer_fields(node)
    if fields is None:
      continue
    prefix = '.'.join(str(p) for p in path)
    for torch_name, attr, axes in fields:
      variable = getattr(node, attr, None)
      if isinstance(variable, nnx.Variable):
        entries.append(_Entry(f'{prefix}.{torch_name}', variable, axes,
                              isinstance(node, nnx.Linear)))
  return entries


def _check_covered(model, model_name, entries):
  """Every Param/BatchStat must come from the checkpoint: no silently random weights."""
  covered = {id(entry.variable) for entry in entries}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.Param, nnx.BatchStat)) and id(node) not in covered:
      name = '.'.join(str(p) for p in path)
      raise NotImplementedError(
          f'{model_name}: no PyTorch mapping for {name} ({type(node).__name__})')


def read_weights(path):
  """{key: np.ndarray} from a PyTorch `.pth`/`.pt` or a `.safetensors` file."""
  from kd_jax import safetensors_reader  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path) and safetensors_reader.is_safetensors(path):
    return safetensors_reader.read_safetensors(path), 'safetensors'
  return read_state_dict(path), 'PyTorch'


def load_torch_teacher(path, model_name, num_classes, *, dtype=jnp.float32):
  """Builds kd_jax model `model_name` with weights and BN statistics from a .pth or
  .safetensors file (timm's and torchvision's state-dict keys).

  Everything (keys, shapes, class count) is checked before any weight is written.
  """
  from kd_jax import models  # Imported here: the model zoo is only needed to build.

  state, kind = read_weights(path)
  model = _empty_model(models, model_name, num_classes, dtype)
  torch_state = {key: value for key, value in state.items()
                 if key.rsplit('.', 1)[-1] not in _IGNORED_SUFFIXES}
  entries = _expected_entries(model)
  _check_covered(model, model_name, entries)
  where = f'{kind} checkpoint {path} does not fit {model_name}'

  missing = [entry.key for entry in entries if entry.key not in torch_state]
  if missing:
    more = f' ({len(missing)} keys missing in all)' if len(missing) > 1 else ''
    raise UserError(f'{where}: missing key {missing[0]}{more}')
  expected_keys = {entry.key for entry in entries}
  unexpected = [key for key in torch_state if key not in expected_keys]
  if unexpected:
    more = f' ({len(unexpected)} unexpected keys in all)' if len(unexpected) > 1 else ''
    raise UserError(f'{where}: unexpected key {unexpected[0]}{more}')

  converted = []
  for entry in entries:
    value = torch_state[entry.key]
    expected = entry.torch_shape()
    if value.shape != expected:
      raise UserError(f'{where}: {_shape_message(entry, value.shape, expected, num_classes)}')
    converted.append((entry.variable, entry.to_flax(value)))

  for variable, value in converted:
    variable.set_value(jnp.asarray(value, dtype=variable.dtype))
  return model


def _empty_model(models, model_name, num_classes, dtype):
  """The model with shape-only weights (skips random init, seconds per model).

  Falls back to a real build if the model holds state the checkpoint cannot fill.
  """
  make = lambda: models.create(model_name, num_classes, rngs=nnx.Rngs(0), dtype=dtype)
  model = nnx.eval_shape(make)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable) and not isinstance(node, (nnx.Param, nnx.BatchStat)):
      return make()
  return model


def _shape_message(entry, torch_shape, expected, num_classes):
  """Shape-mismatch text; speaks of classes when a classifier's output count differs."""
  if (entry.is_linear and expected[0] == num_classes and torch_shape[:1] != expected[:1]
      and tuple(torch_shape[1:]) == tuple(expected[1:])):
    return (f'{entry.key} has {torch_shape[0]} classes, expected {num_classes} '
            f'(shape {tuple(torch_shape)}, expected {expected})')
  return f'{entry.key} has shape {tuple(torch_shape)}, expected {expected}'
