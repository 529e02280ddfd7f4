"""PyTorch teacher import: the torch-free reader, the weight mapping, errors, the CLI.

torch is used here only to write real `torch.save` files and to run the reference
models of tests/torch_reference.py; kd_jax itself never imports it.
"""
import argparse
import collections
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip(
    'torch', reason='torch (test-only dependency: pip install -e .[test]) writes the '
    'reference .pth files')

from kd_jax import torch_checkpoint  # pylint: disable=g-import-not-at-top
from kd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
from tests import torch_reference  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One architecture per code path of the model zoo, plus the torchvision layout.
ARCHITECTURES = ['resnet20', 'resnet8x4', 'ResNet50', 'wrn_16_2', 'wrn_40_1', 'vgg8',
                 'vgg13', 'MobileNetV2', 'ShuffleV1', 'ShuffleV2', 'imagenet_resnet18']


def _reference(name, num_classes=100, seed=0):
  generator = torch.Generator().manual_seed(seed)
  return torch_reference.randomize(torch_reference.MODELS[name](num_classes), generator)


def _save(obj, path, legacy=False):
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  return str(path)


def _forward(model, images_nchw):
  """Eval-mode (logits, pooled) of a kd_jax model on NCHW torch images."""
  images = jnp.asarray(images_nchw.numpy().transpose(0, 2, 3, 1))
  logits, features = nnx.jit(lambda m, x: m(x, train=False))(model, images)
  return np.asarray(logits), np.asarray(features['pooled'])


@pytest.fixture(scope='module')
def resnet8_file(tmp_path_factory):
  """A small mdistiller-style teacher file ({'model': state_dict}) and its state dict."""
  state = _reference('resnet8').state_dict()
  path = tmp_path_factory.mktemp('teacher') / 'resnet8.pth'
  return _save({'model': state, 'epoch': 240, 'best_acc': torch.tensor(71.0)}, path), state


# --- The mapping: same outputs as PyTorch on the same weights ---

@pytest.mark.parametrize('name', ARCHITECTURES)
def test_outputs_match_pytorch(name, tmp_path):
  reference = _reference(name)
  size = 64 if name.startswith('imagenet') else 32
  images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    torch_logits, torch_pooled = reference(images)
  path = _save({'model': reference.state_dict()}, tmp_path / f'{name}.pth')

  model = torch_checkpoint.load_torch_teacher(path, name, 100)
  logits, pooled = _forward(model, images)

  assert torch_pooled.std() > 0.01  # Activations are not degenerate: the check has teeth.
  np.testing.assert_allclose(logits, torch_logits.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(pooled, torch_pooled.numpy(), rtol=0, atol=1e-4)


def test_layouts_and_running_stats_land_in_place(resnet8_file):
  path, state = resnet8_file
  model = torch_checkpoint.load_torch_teacher(path, 'resnet8', 100)
  np.testing.assert_array_equal(
      model.layer2[0].conv1.kernel[...],
      state['layer2.0.conv1.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.fc.kernel[...], state['fc.weight'].numpy().T)
  bn = model.layer2[0].downsample[1]
  np.testing.assert_array_equal(bn.mean[...],
                                state['layer2.0.downsample.1.running_mean'].numpy())
  np.testing.assert_array_equal(bn.var[...],
                                state['layer2.0.downsample.1.running_var'].numpy())
  assert model.fc.kernel[...].dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_weights(resnet8_file):
  path, _ = resnet8_file
  model = torch_checkpoint.load_torch_teacher(path, 'resnet8', 100, dtype=jnp.bfloat16)
  assert model.conv1.kernel[...].dtype == jnp.float32
  logits, _ = model(jnp.zeros((1, 32, 32, 3)), train=False)
  assert logits.shape == (1, 100)


# --- The reader ---

def _assert_same(arrays, state):
  assert list(arrays) == list(state)
  for key, tensor in state.items():
    expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    assert arrays[key].shape == tuple(tensor.shape), key
    np.testing.assert_array_equal(arrays[key].astype(np.float64),
                                  expected.astype(np.float64), err_msg=key)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_reader_handles_dtypes_views_and_formats(legacy, tmp_path):
  base = torch.randn(5, 6)
  state = collections.OrderedDict(
      transposed=base.t(),                          # non-contiguous: strides (1, 6)
      column=base[1:, 2],                           # storage offset + stride 6
      half=torch.randn(3, 4).half(),
      bfloat=torch.randn(7).bfloat16(),
      steps=torch.tensor(12),                       # int64 scalar
      empty=torch.zeros(0, 3),
      double=torch.randn(2, dtype=torch.float64))
  arrays = torch_checkpoint.read_state_dict(_save(state, tmp_path / 'x.pth', legacy))
  _assert_same(arrays, state)
  assert arrays['transposed'].flags['C_CONTIGUOUS']
  assert arrays['half'].dtype == np.float16
  assert arrays['bfloat'].dtype == ml_dtypes.bfloat16
  assert arrays['steps'].dtype == np.int64


def test_reader_accepts_bare_state_dict_and_state_dict_entry(resnet8_file, tmp_path):
  _, state = resnet8_file
  bare = torch_checkpoint.read_state_dict(_save(state, tmp_path / 'bare.pth'))
  _assert_same(bare, state)
  wrapped = torch_checkpoint.read_state_dict(
      _save({'state_dict': state, 'arch': 'resnet8'}, tmp_path / 'wrapped.pth'))
  _assert_same(wrapped, state)


def test_reader_strips_data_parallel_prefix(resnet8_file, tmp_path):
  _, state = resnet8_file
  prefixed = collections.OrderedDict(('module.' + k, v) for k, v in state.items())
  arrays = torch_checkpoint.read_state_dict(_save({'model': prefixed}, tmp_path / 'dp.pth'))
  _assert_same(arrays, state)


def test_float16_and_legacy_checkpoints_load_into_the_model(resnet8_file, tmp_path):
  _, state = resnet8_file
  half = collections.OrderedDict((k, v.half() if v.is_floating_point() else v)
                                 for k, v in state.items())
  path = _save({'model': half}, tmp_path / 'half.pth', legacy=True)
  model = torch_checkpoint.load_torch_teacher(path, 'resnet8', 100)
  np.testing.assert_array_equal(model.conv1.kernel[...],
                                half['conv1.weight'].float().numpy().transpose(2, 3, 1, 0))


def test_reader_ignores_extras_but_never_runs_them(resnet8_file, tmp_path):
  _, state = resnet8_file
  marker = tmp_path / 'ran'

  class Payload:

    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  extras = {'model': state, 'args': argparse.Namespace(lr=0.05), 'payload': Payload()}
  arrays = torch_checkpoint.read_state_dict(_save(extras, tmp_path / 'extras.pth'))
  _assert_same(arrays, state)
  assert not marker.exists()

  bad = dict(state, evil=Payload())
  with pytest.raises(UserError, match=r"entry 'evil' is a pickled .*system object"):
    torch_checkpoint.read_state_dict(_save({'model': bad}, tmp_path / 'bad.pth'))
  assert not marker.exists()


def test_reader_refuses_a_pickled_module(tmp_path):
  path = _save(torch.nn.Linear(2, 3), tmp_path / 'module.pth')
  with pytest.raises(UserError, match='torch.nn.modules.linear.Linear object, not a state'):
    torch_checkpoint.read_state_dict(path)


def test_reader_errors_on_missing_and_corrupt_files(resnet8_file, tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    torch_checkpoint.read_state_dict(tmp_path / 'nowhere.pth')
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint at all')
  with pytest.raises(UserError, match='cannot read PyTorch checkpoint'):
    torch_checkpoint.read_state_dict(tmp_path / 'junk.pth')
  path, _ = resnet8_file
  truncated = tmp_path / 'truncated.pth'
  with open(path, 'rb') as file:
    truncated.write_bytes(file.read()[:5000])
  with pytest.raises(UserError, match='cannot read PyTorch checkpoint'):
    torch_checkpoint.read_state_dict(truncated)


# --- Errors of load_torch_teacher: one line, naming the first offending key ---

def _load_error(path, name='resnet8', num_classes=100):
  with pytest.raises(UserError) as error:
    torch_checkpoint.load_torch_teacher(path, name, num_classes)
  message = str(error.value)
  assert '\n' not in message
  return message


def test_error_missing_file(tmp_path):
  assert 'does not exist' in _load_error(tmp_path / 'nowhere.pth')


def test_error_wrong_architecture(tmp_path):
  path = _save({'model': _reference('resnet20').state_dict()}, tmp_path / 'r20.pth')
  message = _load_error(path, 'resnet8x4')
  assert 'does not fit resnet8x4' in message
  assert 'missing key layer1.0.downsample.0.weight' in message


def test_error_wrong_class_count(tmp_path):
  path = _save({'model': _reference('resnet8', num_classes=10).state_dict()},
               tmp_path / 'c10.pth')
  assert 'fc.weight has 10 classes, expected 100' in _load_error(path)


def test_error_shape_mismatch_names_both_shapes(resnet8_file, tmp_path):
  _, state = resnet8_file
  bad = dict(state, **{'layer1.0.conv2.weight': torch.zeros(16, 16, 1, 1)})
  message = _load_error(_save(bad, tmp_path / 'shape.pth'))
  assert 'layer1.0.conv2.weight has shape (16, 16, 1, 1), expected (16, 16, 3, 3)' in message


def test_error_missing_key(resnet8_file, tmp_path):
  _, state = resnet8_file
  partial = {k: v for k, v in state.items() if k != 'layer2.0.bn1.running_var'}
  message = _load_error(_save({'model': partial}, tmp_path / 'partial.pth'))
  assert 'missing key layer2.0.bn1.running_var' in message


def test_error_unexpected_key(resnet8_file, tmp_path):
  _, state = resnet8_file
  extra = dict(state, **{'projector.weight': torch.zeros(4, 4)})
  message = _load_error(_save({'model': extra}, tmp_path / 'extra.pth'))
  assert 'unexpected key projector.weight' in message


def test_error_unknown_model(resnet8_file):
  path, _ = resnet8_file
  assert 'unknown model' in _load_error(path, 'resnet9000')


# --- The converter CLI ---

def test_convert_teacher_round_trip(resnet8_file, tmp_path):
  from kd_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from kd_jax import convert_teacher  # pylint: disable=g-import-not-at-top

  path, _ = resnet8_file
  out = tmp_path / 'teacher'
  assert convert_teacher.main(['--pth', path, '--model', 'resnet8', '--num_classes', '100',
                               '--out', str(out)]) == 0
  restored = checkpoint.load_teacher(str(out), 'resnet8', 100)
  direct = torch_checkpoint.load_torch_teacher(path, 'resnet8', 100)
  restored_leaves = jax.tree.leaves(nnx.state(restored))
  direct_leaves = jax.tree.leaves(nnx.state(direct))
  assert len(restored_leaves) == len(direct_leaves)
  for a, b in zip(restored_leaves, direct_leaves):
    np.testing.assert_array_equal(a, b)


def test_convert_teacher_user_error_is_one_line_exit_2(resnet8_file, tmp_path):
  path, _ = resnet8_file
  result = subprocess.run(
      [sys.executable, '-m', 'kd_jax.convert_teacher', '--pth', path, '--model',
       'resnet8x4', '--out', str(tmp_path / 'out')],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      check=False)
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0
  assert 'does not fit resnet8x4' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_kd_jax_never_imports_torch(resnet8_file, tmp_path):
  path, _ = resnet8_file
  code = ('import sys; from kd_jax import convert_teacher, metrics, torch_checkpoint, train; '
          f'torch_checkpoint.load_torch_teacher({path!r}, "resnet8", 100); '
          f'metrics.MetricWriter({str(tmp_path)!r}).close(); '  # tensorboardX's own import
          'assert "torch" not in sys.modules, "kd_jax imported torch"')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert result.returncode == 0, result.stderr[-2000:]
