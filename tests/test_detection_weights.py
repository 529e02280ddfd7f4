"""Detector weights files (kd_jax.detection.weights): model-zoo and MSRA `.pkl`, the
torchvision `.pth`, and refusal of malicious, truncated and malformed files.

The files are written here: pickles of random NumPy arrays in the structure detectron2's
files have, and the expected detectron2 names are spelled out from detectron2's ResNet
(detectron2/modeling/backbone/resnet.py: stem.conv1(.norm), resN.i.conv1..3(.norm),
resN.0.shortcut(.norm)), not derived from the code under test.
"""
import os
import pickle

import numpy as np
import pytest

from kd_jax.detection import weights
from kd_jax.errors import UserError

PREFIX = 'backbone.bottom_up.'


def _write(path, obj, protocol=4):
  with open(path, 'wb') as file:
    pickle.dump(obj, file, protocol=protocol)
  return str(path)


class _Python2Array:
  """Pickles an array as Python 2's numpy did: data as a str (what latin1 decoding of a
  Python 2 pickle hands numpy), built through numpy's _reconstruct."""

  def __init__(self, array):
    self.array = array

  def __reduce__(self):
    array = self.array
    return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b'b'),
            (1, array.shape, array.dtype, False, array.tobytes().decode('latin1')))


def _random(rng, *shape):
  return rng.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ model zoo .pkl


def _model_zoo_state(rng):
  return {
      'backbone.bottom_up.stem.conv1.weight': _random(rng, 4, 3, 7, 7),
      'backbone.bottom_up.stem.conv1.norm.weight': _random(rng, 4),
      'backbone.bottom_up.stem.conv1.norm.bias': _random(rng, 4),
      'backbone.bottom_up.stem.conv1.norm.running_mean': _random(rng, 4),
      'backbone.bottom_up.stem.conv1.norm.running_var': np.abs(_random(rng, 4)),
      'backbone.fpn_lateral2.weight': _random(rng, 8, 4, 1, 1),
      'backbone.fpn_lateral2.bias': _random(rng, 8),
      'proposal_generator.rpn_head.conv.weight': _random(rng, 8, 8, 3, 3),
      'roi_heads.box_head.fc1.weight': _random(rng, 16, 8 * 7 * 7),
      'roi_heads.box_predictor.cls_score.weight': _random(rng, 81, 16),
      'roi_heads.box_predictor.bbox_pred.bias': _random(rng, 320),
  }


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_model_zoo_pkl_round_trips_names_and_values(tmp_path, protocol):
  state = _model_zoo_state(np.random.default_rng(protocol))
  path = _write(tmp_path / 'model_final.pkl',
                {'model': state, '__author__': 'Detectron2 Model Zoo'}, protocol)
  loaded = weights.load_detectron2_weights(path)
  assert loaded.keys() == state.keys()
  for name, value in state.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value)


def test_python2_style_arrays_and_scalars_are_read(tmp_path):
  """MSRA's files come from Python 2: array bytes arrive as latin1 text."""
  array = _random(np.random.default_rng(0), 2, 3)
  path = _write(tmp_path / 'old.pkl', {'conv1_w': _Python2Array(array),
                                       'scale': np.float64(0.5)}, protocol=2)
  loaded = weights.read_pickle(path)
  np.testing.assert_array_equal(loaded['conv1_w'], array)
  assert loaded['scale'] == 0.5 and loaded['scale'].dtype == np.float64


# ------------------------------------------------------------------ MSRA Caffe2 names


def _msra_r50_blobs(rng):
  """Blob names of MSRA's R-50.pkl (Detectron's ResNet: 3, 4, 6, 3 bottlenecks), with the
  momentum blobs and the ImageNet classifier the file also holds; tiny random arrays."""
  blobs = {'conv1_w': _random(rng, 4, 3, 7, 7), 'res_conv1_bn_s': _random(rng, 4),
           'res_conv1_bn_b': _random(rng, 4), 'fc1000_w': _random(rng, 10, 8),
           'fc1000_b': _random(rng, 10), 'conv1_w_momentum': _random(rng, 4, 3, 7, 7)}
  for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for block in range(blocks):
      branches = ('branch2a', 'branch2b', 'branch2c') + (('branch1',) if block == 0 else ())
      for branch in branches:
        name = f'res{stage}_{block}_{branch}'
        blobs[f'{name}_w'] = _random(rng, 2, 2, 1, 1)
        blobs[f'{name}_bn_s'] = _random(rng, 2)
        blobs[f'{name}_bn_b'] = _random(rng, 2)
  return blobs


def _detectron2_r50_names():
  """detectron2's ResNet-50 backbone state-dict names (FrozenBN: 4 entries per norm)."""
  norm = ('weight', 'bias', 'running_mean', 'running_var')
  names = ['stem.conv1.weight'] + [f'stem.conv1.norm.{n}' for n in norm]
  for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for block in range(blocks):
      convs = ('conv1', 'conv2', 'conv3') + (('shortcut',) if block == 0 else ())
      for conv in convs:
        names += [f'res{stage}.{block}.{conv}.weight']
        names += [f'res{stage}.{block}.{conv}.norm.{n}' for n in norm]
  return {PREFIX + name for name in names}


def test_msra_r50_blob_names_become_detectron2_names(tmp_path):
  blobs = _msra_r50_blobs(np.random.default_rng(1))
  loaded = weights.load_detectron2_weights(_write(tmp_path / 'R-50.pkl', blobs, 2))
  assert set(loaded) == _detectron2_r50_names()
  assert len(loaded) == 1 + 4 + (16 * 3 + 4) * 5  # 16 bottlenecks, 4 shortcuts, each + norm
  pairs = {'stem.conv1.weight': 'conv1_w', 'stem.conv1.norm.weight': 'res_conv1_bn_s',
           'stem.conv1.norm.bias': 'res_conv1_bn_b',
           'res2.0.shortcut.weight': 'res2_0_branch1_w',
           'res2.0.shortcut.norm.weight': 'res2_0_branch1_bn_s',
           'res3.1.conv1.weight': 'res3_1_branch2a_w',
           'res4.5.conv2.norm.bias': 'res4_5_branch2b_bn_b',
           'res5.2.conv3.norm.weight': 'res5_2_branch2c_bn_s'}
  for name, blob in pairs.items():
    np.testing.assert_array_equal(loaded[PREFIX + name], blobs[blob])
  # FrozenBatchNorm2d's fill for a file without the statistics: mean 0, var 1.
  np.testing.assert_array_equal(loaded[PREFIX + 'res3.1.conv1.norm.running_mean'], np.zeros(2))
  np.testing.assert_array_equal(loaded[PREFIX + 'res3.1.conv1.norm.running_var'], np.ones(2))


def test_caffe2_detector_blobs_entry_and_basic_renames():
  assert weights.convert_basic_c2_names(
      ['res_conv1_bn_s', 'conv1_b', 'res2_1_branch2c_bn_running_var', 'res3_0_branch1_bn_beta',
       'pred_w', 'res4_0_branch2a_gn_s']) == [
           'stem.conv1.norm.weight', 'stem.conv1.bias', 'res2.1.conv3.norm.running_var',
           'res3.0.shortcut.norm.bias', 'linear.weight', 'res4.0.conv1.norm.weight']


def test_caffe2_file_without_backbone_is_one_line(tmp_path):
  path = _write(tmp_path / 'other.pkl', {'blobs': {'fc1000_w': np.zeros((2, 2), np.float32)}})
  with pytest.raises(UserError, match='no ResNet backbone weights') as error:
    weights.load_detectron2_weights(path)
  assert path in str(error.value) and '\n' not in str(error.value)


# ------------------------------------------------------------------ torchvision ResNet-18


def _torchvision_resnet18_state(torch):
  """torchvision's resnet18().state_dict() names (models/resnet.py: conv1, bn1, layerN.i
  BasicBlocks with conv1/bn1/conv2/bn2, downsample.0/.1 in layer2..4 block 0, fc), random
  values (torchvision itself is slow to import on the CI's two cores)."""
  generator = torch.Generator().manual_seed(0)
  norm = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
  names = ['conv1.weight'] + [f'bn1.{n}' for n in norm] + ['fc.weight', 'fc.bias']
  for layer in (1, 2, 3, 4):
    for block in (0, 1):
      for index in (1, 2):
        names += [f'layer{layer}.{block}.conv{index}.weight']
        names += [f'layer{layer}.{block}.bn{index}.{n}' for n in norm]
      if block == 0 and layer > 1:
        names += [f'layer{layer}.0.downsample.0.weight']
        names += [f'layer{layer}.0.downsample.1.{n}' for n in norm]
  return {name: (torch.tensor(3) if name.endswith('tracked') else
                 torch.randn(2, 3, generator=generator)) for name in names}


def test_torchvision_resnet18_pth_gets_detectron2_names(tmp_path):
  torch = pytest.importorskip('torch')
  state = _torchvision_resnet18_state(torch)
  path = str(tmp_path / 'resnet18.pth')
  torch.save(state, path)
  loaded = weights.load_detectron2_weights(path)
  norm = ('weight', 'bias', 'running_mean', 'running_var')
  expected = {'stem.conv1.weight'} | {f'stem.conv1.norm.{n}' for n in norm}
  for stage in (2, 3, 4, 5):
    for block in (0, 1):
      convs = ('conv1', 'conv2') + (('shortcut',) if block == 0 and stage > 2 else ())
      for conv in convs:
        expected |= {f'res{stage}.{block}.{conv}.weight'}
        expected |= {f'res{stage}.{block}.{conv}.norm.{n}' for n in norm}
  assert set(loaded) == {PREFIX + name for name in expected}
  pairs = {'stem.conv1.norm.running_var': 'bn1.running_var',
           'res3.0.shortcut.weight': 'layer2.0.downsample.0.weight',
           'res3.0.shortcut.norm.bias': 'layer2.0.downsample.1.bias',
           'res5.1.conv2.norm.running_mean': 'layer4.1.bn2.running_mean'}
  for name, torch_name in pairs.items():
    np.testing.assert_array_equal(loaded[PREFIX + name], state[torch_name].numpy())


def test_detectron2_named_and_mobilenet_pth(tmp_path):
  """A detectron2 checkpoint (RCNNKD's student + `teacher.`) keeps its names; a
  MobileNetV2 of the ND layout goes under the backbone without its classifier."""
  torch = pytest.importorskip('torch')
  generator = torch.Generator().manual_seed(1)
  combined = {'backbone.bottom_up.stem.conv1.weight': torch.randn(4, 3, 7, 7, generator=generator),
              'teacher.roi_heads.box_head.fc1.bias': torch.randn(8, generator=generator),
              'backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked': torch.tensor(5)}
  path = str(tmp_path / 'r18-r101.pth')
  torch.save({'model': combined, 'iteration': 3}, path)
  loaded = weights.load_detectron2_weights(path)
  assert set(loaded) == set(list(combined)[:2])
  np.testing.assert_array_equal(loaded['teacher.roi_heads.box_head.fc1.bias'],
                                combined['teacher.roi_heads.box_head.fc1.bias'].numpy())
  mobilenet = {'features.0.0.weight': torch.randn(32, 3, 3, 3, generator=generator),
               'features.1.conv.0.weight': torch.randn(32, 1, 3, 3, generator=generator),
               'classifier.weight': torch.randn(10, 4, generator=generator)}
  path = str(tmp_path / 'mobilenetv2.pth')
  torch.save(mobilenet, path)
  assert set(weights.load_detectron2_weights(path)) == {
      PREFIX + 'features.0.0.weight', PREFIX + 'features.1.conv.0.weight'}
  path = str(tmp_path / 'other.pth')
  torch.save({'head.weight': torch.zeros(2)}, path)
  with pytest.raises(UserError, match="neither detectron2 names.*'head.weight'"):
    weights.load_detectron2_weights(path)


def test_converted_torchvision_pkl_uses_matching_heuristics(tmp_path):
  """convert-torchvision-to-d2.py's output: short names + matching_heuristics."""
  rng = np.random.default_rng(2)
  model = {'stem.conv1.weight': _random(rng, 4, 3, 7, 7), 'stem.fc.weight': _random(rng, 3, 4),
           'res2.0.conv1.norm.running_var': _random(rng, 4)}
  path = _write(tmp_path / 'r18.pkl', {'model': model, '__author__': 'torchvision',
                                       'matching_heuristics': True})
  loaded = weights.load_detectron2_weights(path)
  assert set(loaded) == {PREFIX + 'stem.conv1.weight', PREFIX + 'res2.0.conv1.norm.running_var'}


# ------------------------------------------------------------------ refusals


class _System:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class _Eval:
  def __reduce__(self):
    return (eval, ('1 + 1',))


def test_malicious_pickle_is_refused_without_running(tmp_path):
  marker = tmp_path / 'ran'
  path = _write(tmp_path / 'evil.pkl', {'model': {'x': _System(f'touch {marker}')},
                                        '__author__': 'x'})
  with pytest.raises(UserError) as error:
    weights.load_detectron2_weights(path)
  message = str(error.value)
  assert path in message and 'system' in message and 'refused' in message
  assert '\n' not in message and not marker.exists()
  with pytest.raises(UserError, match='builtins.eval'):
    weights.read_pickle(_write(tmp_path / 'eval.pkl', [_Eval()]))


def test_object_arrays_are_refused(tmp_path):
  path = _write(tmp_path / 'objects.pkl', {'x': np.array([1, 'a'], dtype=object)})
  with pytest.raises(UserError, match='dtype'):
    weights.read_pickle(path)


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_truncated_file_names_file_and_tensor(tmp_path, protocol):
  rng = np.random.default_rng(3)
  state = {'backbone.bottom_up.stem.conv1.weight': _random(rng, 8, 3, 7, 7),
           'backbone.bottom_up.res2.0.conv1.weight': _random(rng, 64, 8, 1, 1),
           'roi_heads.box_head.fc1.weight': _random(rng, 32, 8)}
  data = pickle.dumps({'model': state, '__author__': 'Detectron2 Model Zoo'}, protocol)
  # Cut inside the res2 conv's 2 KiB of data: half-way between its name and the next.
  start, end = (data.index(name.encode()) for name in list(state)[1:])
  cut = (start + end) // 2
  path = tmp_path / 'cut.pkl'
  path.write_bytes(data[:cut])
  with pytest.raises(UserError) as error:
    weights.load_detectron2_weights(path)
  message = str(error.value)
  assert str(path) in message and 'truncated or corrupt' in message
  assert 'backbone.bottom_up.res2.0.conv1.weight' in message and '\n' not in message


def test_garbage_and_malformed_files_are_one_line(tmp_path):
  garbage = tmp_path / 'garbage.pkl'
  garbage.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(UserError, match='truncated or corrupt'):
    weights.load_detectron2_weights(garbage)
  with pytest.raises(UserError, match='does not exist'):
    weights.load_detectron2_weights(tmp_path / 'missing.pkl')
  listed = _write(tmp_path / 'list.pkl', {'model': {'a': [1, 2]}, '__author__': 'x'})
  with pytest.raises(UserError, match="entry 'a'.*list, not an array"):
    weights.load_detectron2_weights(listed)
