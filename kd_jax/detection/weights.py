"""Detector weights files, read without torch: {detectron2 state-dict name: np.ndarray}.

Three kinds of file, as detectron2's DetectionCheckpointer._load_file tells them apart
(detectron2/checkpoint/detection_checkpoint.py):
  - a detectron2 model-zoo `.pkl` (`model_final_*.pkl`): a pickle (latin1) of
    {"model": {name: ndarray}, "__author__": ...}, names already detectron2's
    (`backbone.bottom_up.res2.0.conv1.weight`, `roi_heads.box_predictor.cls_score.bias`);
  - an MSRA Caffe2 ImageNet backbone (`R-50.pkl`, `R-101.pkl`): a pickle of
    {blob name: ndarray} (`conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`, ...), renamed as
    c2_model_loading.convert_basic_c2_names does;
  - a `.pth` (read by kd_jax.torch_checkpoint): detectron2's own checkpoints and the ND /
    ReviewKD student+teacher files (RCNNKD holds its teacher as `teacher.`) keep their
    names; a torchvision ResNet
    (`resnet18-f37072fd.pth`) is renamed as detectron2's tools/convert-torchvision-to-d2.py
    does; a MobileNetV2 in the ND backbone's layout (`features.N.conv.M`, as
    tonylins/pytorch-mobilenet-v2's ImageNet weights) goes under the backbone as is.
Backbone-only files are then named as align_and_update_state_dicts' suffix matching
names them in an FPN detector: `backbone.bottom_up.` + the converted name; entries no
detectron2 ResNet has (the ImageNet classifier `fc1000`/`fc`, `*_momentum`,
`num_batches_tracked`) are left out. A FrozenBatchNorm whose file holds only the affine
pair (every MSRA norm) gets running_mean 0 and running_var 1, the values
FrozenBatchNorm2d._load_from_state_dict fills in for a state dict without version metadata.

Pickles are read through an unpickler that resolves nothing but NumPy's array, dtype and
scalar rebuilders (object dtypes refused) and `_codecs.encode` to latin1 (protocol-2
bytes): any other global refuses the file, so a weights file cannot run code.
"""
import codecs
import os
import pickle
import re
import struct

import numpy as np

from kd_jax import torch_checkpoint
from kd_jax.errors import UserError

BACKBONE_PREFIX = 'backbone.bottom_up.'
_BACKBONE_NAME = re.compile(r'^(stem\.conv1\.|res[2-5]\.\d+\.)')
_MOBILENET_NAME = re.compile(r'^features\.\d+\.')
# Top-level modules of a detectron2 detector (and the ND/ReviewKD combined files' teacher).
_DETECTOR_ROOTS = ('backbone.', 'proposal_generator.', 'roi_heads.', 'teacher.')
_NORM_BUFFERS = (('running_mean', 0.0), ('running_var', 1.0))


class _Refused(Exception):
  """Raised inside unpickling; becomes a UserError naming the file."""


def _plain_dtype(dtype):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise _Refused(f'an array of dtype {dtype!r:.40} (only plain numeric arrays are read)')
  return dtype


def _new_dtype(spec, align=False, copy=False):
  """numpy.dtype as pickles call it, refusing object dtypes."""
  return _plain_dtype(np.dtype(spec, align, copy))


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """The pure-Python unpickler with an allow-list of globals.

  Pure Python so that a failure can name the tensor being read: the dict entry whose
  value was under construction (`tensor_in_progress`).
  """

  def __init__(self, file):
    super().__init__(file, encoding='latin1')
    self._pending = set()  # ids of arrays created but not yet filled by BUILD
    self.dispatch = dict(self.dispatch)
    self.dispatch[pickle.BUILD[0]] = _Unpickler._build

  def _reconstruct(self, subtype, shape, dtype):
    """numpy's _reconstruct(ndarray, shape, dtype): an empty array BUILD then fills."""
    if subtype is not np.ndarray:
      raise _Refused(f'an array of type {subtype!r:.60}')
    array = np.ndarray.__new__(np.ndarray, shape, _plain_dtype(np.dtype(dtype)))
    self._pending.add(id(array))
    return array

  @staticmethod
  def _frombuffer(buffer, dtype, shape, order):
    """numpy's _frombuffer (protocol-5 arrays): a copy of the bytes as an array."""
    dtype = _plain_dtype(dtype)
    array = np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order)
    return array.copy(order=order)

  @staticmethod
  def _scalar(dtype, data):
    """numpy's scalar(dtype, bytes); Python 2 pickles hand the bytes as latin1 text."""
    if isinstance(data, str):
      data = data.encode('latin1')
    return np.frombuffer(data, dtype=_plain_dtype(dtype), count=1)[0]

  @staticmethod
  def _encode(text, encoding):
    if encoding != 'latin1':
      raise _Refused(f'_codecs.encode with encoding {encoding!r:.20}')
    return codecs.encode(text, 'latin1')

  def find_class(self, module, name):
    allowed = {'_reconstruct': self._reconstruct, '_frombuffer': self._frombuffer,
               'scalar': self._scalar, 'ndarray': np.ndarray, 'dtype': _new_dtype}
    numpy_modules = ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray',
                     'numpy.core.numeric', 'numpy._core.numeric')
    if module in numpy_modules and name in allowed:
      return allowed[name]
    if (module, name) == ('_codecs', 'encode'):
      return self._encode
    raise _Refused(f'it refers to the global {module}.{name}, which a weights file has '
                   'no need of (refused: unpickling it could run code)')

  def _build(self):
    array = self.stack[-1]
    if isinstance(array, np.ndarray) and id(array) not in self._pending:
      raise _Refused('a pickle that modifies an array it has already built')
    pickle._Unpickler.load_build(self)  # pylint: disable=protected-access
    self._pending.discard(id(array))

  def tensor_in_progress(self):
    """The name of the tensor being read when the file failed, or None.

    A dict entry is pushed as its key, then its value: the tensor being read is the key
    just below an array not yet filled by BUILD (or below numpy's _frombuffer, whose
    arguments are still being read), in whichever mark frame it sits.
    """
    for frame in reversed([*self.metastack, self.stack]):
      if len(frame) >= 2 and isinstance(frame[-2], str):
        value = frame[-1]
        if id(value) in self._pending or value is self._frombuffer:
          return frame[-2]
    return None


def read_pickle(path):
  """The object in pickle file `path`, through the restricted unpickler."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'weights file {path} does not exist')
  with open(path, 'rb') as file:
    unpickler = _Unpickler(file)
    try:
      return unpickler.load()
    except _Refused as error:
      raise UserError(f'cannot read weights file {path}: {error}') from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError, struct.error) as error:
      tensor = unpickler.tensor_in_progress()
      where = f' while reading tensor {tensor}' if tensor else ''
      raise UserError(f'cannot read weights file {path}: truncated or corrupt{where} '
                      f'({type(error).__name__}: {str(error)[:120]})') from None


def _arrays(path, state, what):
  """`state` checked to be {str: ndarray}."""
  if not isinstance(state, dict):
    raise UserError(f'weights file {path}: {what} is a {type(state).__name__}, not a dict '
                    'of arrays')
  for key, value in state.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      raise UserError(f'weights file {path}: entry {key!r:.80} of {what} is a '
                      f'{type(value).__name__}, not an array')
  return state


def convert_basic_c2_names(names):
  """Caffe2 blob names -> detectron2 names: detectron2's convert_basic_c2_names
  (c2_model_loading.py) for the ResNet backbone (its DensePose renames left out)."""
  rules = ((r'\.b$', '.bias'), (r'\.w$', '.weight'),
           (r'bn\.s$', 'norm.weight'), (r'bn\.bias$', 'norm.bias'),
           (r'bn\.rm', 'norm.running_mean'), (r'bn\.running.mean$', 'norm.running_mean'),
           (r'bn\.riv$', 'norm.running_var'), (r'bn\.running.var$', 'norm.running_var'),
           (r'bn\.gamma$', 'norm.weight'), (r'bn\.beta$', 'norm.bias'),
           (r'gn\.s$', 'norm.weight'), (r'gn\.bias$', 'norm.bias'),
           (r'^res\.conv1\.norm\.', 'conv1.norm.'), (r'^conv1\.', 'stem.conv1.'))
  blocks = (('.branch1.', '.shortcut.'), ('.branch2a.', '.conv1.'),
            ('.branch2b.', '.conv2.'), ('.branch2c.', '.conv3.'))
  converted = []
  for name in names:
    name = {'pred_b': 'linear_b', 'pred_w': 'linear_w'}.get(name, name).replace('_', '.')
    for pattern, replacement in rules:
      name = re.sub(pattern, replacement, name)
    for old, new in blocks:
      name = name.replace(old, new)
    converted.append(name)
  return converted


def torchvision_resnet_names(names):
  """torchvision ResNet state-dict names -> detectron2 names, as detectron2's
  tools/convert-torchvision-to-d2.py renames them (conv1 -> stem.conv1, layer1 -> res2,
  bn2 -> conv2.norm, downsample.0/.1 -> shortcut / shortcut.norm)."""
  converted = []
  for name in names:
    if 'layer' not in name:
      name = 'stem.' + name
    for stage in (1, 2, 3, 4):
      name = name.replace(f'layer{stage}', f'res{stage + 1}')
    for index in (1, 2, 3):
      name = name.replace(f'bn{index}', f'conv{index}.norm')
    name = name.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')
    converted.append(name)
  return converted


def _backbone(path, renamed, pattern=_BACKBONE_NAME, what='ResNet'):
  """{converted name: array} -> the detector's backbone names, with frozen-BN buffers."""
  state = {BACKBONE_PREFIX + name: value for name, value in renamed.items()
           if pattern.match(name) and not name.endswith('num_batches_tracked')}
  if not state:
    raise UserError(f'weights file {path} holds no {what} backbone weights (no conv1 / '
                    'res2..res5 names)' if what == 'ResNet' else
                    f'weights file {path} holds no {what} backbone weights')
  return _with_norm_buffers(state)


def _with_norm_buffers(state):
  """Adds FrozenBatchNorm's running_mean 0 / running_var 1 where a norm has neither."""
  state = dict(state)
  for name in [n for n in state if n.endswith('.norm.weight')]:
    prefix = name[:-len('weight')]
    for buffer, fill in _NORM_BUFFERS:
      state.setdefault(prefix + buffer, np.full_like(state[name], fill))
  return state


def _rename(path, state, names):
  renamed = dict(zip(names, state.values()))
  if len(renamed) != len(state):
    raise UserError(f'weights file {path}: two entries map to the same detectron2 name')
  return renamed


def _torch_file(path):
  """A `.pth`: detectron2-named (DetectionCheckpointer's own files, the ND / ReviewKD
  student+teacher files) as is; a torchvision ResNet renamed; a MobileNetV2 of the ND
  backbone's layout (tonylins/pytorch-mobilenet-v2: features.N...) under the backbone."""
  state, _ = torch_checkpoint.read_weights(path)
  if any(name.startswith(_DETECTOR_ROOTS) for name in state):
    return _with_norm_buffers({name: value for name, value in state.items()
                               if not name.endswith('num_batches_tracked')})
  if 'layer1.0.conv1.weight' in state:
    return _backbone(path, _rename(path, state, torchvision_resnet_names(state)))
  if any(_MOBILENET_NAME.match(name) for name in state):
    return _backbone(path, state, _MOBILENET_NAME, 'MobileNetV2')
  raise UserError(f'weights file {path} holds neither detectron2 names nor a torchvision '
                  f'ResNet or MobileNetV2 (first key {next(iter(state), None)!r:.60})')


def load_detectron2_weights(path):
  """{detectron2 name: ndarray} of a model-zoo `.pkl`, an MSRA `R-*.pkl`, a converted
  torchvision `.pkl` or a `.pth` (see the module docstring and _torch_file)."""
  path = os.fspath(path)
  if not path.endswith('.pkl'):
    return _torch_file(path)
  data = read_pickle(path)
  if isinstance(data, dict) and 'model' in data and '__author__' in data:
    state = _arrays(path, data['model'], 'its "model" entry')
    if data.get('matching_heuristics'):  # a backbone converted by convert-torchvision-to-d2
      return _backbone(path, state)
    return _with_norm_buffers(state)
  if isinstance(data, dict) and 'blobs' in data:  # a Caffe2 detector: its blobs
    data = data['blobs']
  state = _arrays(path, data, 'the file')
  state = {name: value for name, value in state.items() if not name.endswith('_momentum')}
  return _backbone(path, _rename(path, state, convert_basic_c2_names(state)))
