"""ViT / DeiT / RegNetY teachers (METHODS.md 11): timm's parameter counts and logits, timm
checkpoints (.pth and .safetensors) through the teacher loader without torch, the teacher's
own input normalisation, and the ViT -> ResNet-18 configs.

timm and torch are test-only (pytest.importorskip); full-size timm comparisons are slow,
tiny configurations run by default.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import imagenet_common, imagenet_dkd, imagenet_kd, imagenet_nd
from kd_jax import checkpoint, models, safetensors_reader, torch_checkpoint
from kd_jax.errors import UserError
from kd_jax.models import input_norm, regnet, vit
from kd_jax.tools import fetch_teachers, published

# timm 1.0 with num_classes=1000 (counted on the meta device in test_counts_are_timms).
PARAM_COUNTS = {
    'vit_small_patch16_224': 22_050_664, 'vit_base_patch16_224': 86_567_656,
    'deit_tiny_patch16_224': 5_717_416, 'deit_small_patch16_224': 22_050_664,
    'deit_base_patch16_224': 86_567_656, 'deit_tiny_distilled_patch16_224': 5_910_800,
    'deit_small_distilled_patch16_224': 22_436_432,
    'deit_base_distilled_patch16_224': 87_338_192, 'regnety_160': 83_590_140,
}
TINY_VIT = dict(img_size=64, patch_size=16, dim=64, depth=2, num_heads=2)  # vit_micro_patch16_64
TINY_REGNET = dict(depth=8, w0=8, wa=8, wm=2.0, group_size=8, se_ratio=0.25, stem_width=8)


def _run(model, images_nchw, train=False):
  """model(NHWC images) under one nnx.jit: one compile instead of op-by-op dispatch, and
  BatchNorm statistics updated in `model` as in eager mode."""
  forward = nnx.jit(lambda m, x: m(x, train=train))
  return forward(model, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)))


@pytest.fixture(name='micro_vit', scope='module')
def _micro_vit():
  return models.create('vit_micro_patch16_64', 10, rngs=nnx.Rngs(0))


def _count(name):
  abstract = nnx.eval_shape(lambda: models.create(name, 1000, rngs=nnx.Rngs(0)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


# One of each architecture family by default; the rest (same code, other sizes) are slow.
_DEFAULT_COUNTED = ('vit_small_patch16_224', 'deit_tiny_distilled_patch16_224', 'regnety_160')


@pytest.mark.parametrize('name', [
    name if name in _DEFAULT_COUNTED else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(PARAM_COUNTS)])
def test_parameter_count_is_exact_and_timms(name):
  assert _count(name) == PARAM_COUNTS[name]
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  with torch.device('meta'):  # no memory, no init
    reference = timm.create_model(name, pretrained=False, num_classes=1000)
  assert sum(p.numel() for p in reference.parameters()) == PARAM_COUNTS[name]
  if name == 'regnety_160':  # the stage table written out in kd_jax/models/regnet.py
    stage_args, _ = reference._get_stage_args(_regnet_cfg(name))
    assert tuple((a['out_chs'], a['depth'], a['group_size']) for a in stage_args) == (
        regnet.REGNETY_160)


def _regnet_cfg(name):
  from timm.models.regnet import model_cfgs  # pylint: disable=g-import-not-at-top
  return model_cfgs[name]


# ----------------------------------------------------------------- timm references


def _timm_vit(distilled, num_classes=10, seed=0):
  torch = pytest.importorskip('torch')
  pytest.importorskip('timm')
  from timm.models.deit import VisionTransformerDistilled  # pylint: disable=g-import-not-at-top
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  cls = VisionTransformerDistilled if distilled else VisionTransformer
  model = cls(img_size=TINY_VIT['img_size'], patch_size=TINY_VIT['patch_size'],
              embed_dim=TINY_VIT['dim'], depth=TINY_VIT['depth'],
              num_heads=TINY_VIT['num_heads'], num_classes=num_classes)
  with torch.no_grad():  # a non-trivial cls token and LayerNorm affine
    for name, param in model.named_parameters():
      if 'norm' in name or 'token' in name:
        param.add_(0.1 * torch.randn_like(param))
  return model.eval()


def _timm_regnet(num_classes=10, seed=0):
  torch = pytest.importorskip('torch')
  pytest.importorskip('timm')
  from timm.models.regnet import RegNet, RegNetCfg  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = RegNet(RegNetCfg(**TINY_REGNET), num_classes=num_classes)
  with torch.no_grad():  # running statistics and affine away from their init values
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  return model.eval()


def _regnet_stages(timm_model):
  stage_args, _ = timm_model._get_stage_args(_regnet_cfg_tiny())
  return tuple((a['out_chs'], a['depth'], a['group_size']) for a in stage_args)


def _regnet_cfg_tiny():
  from timm.models.regnet import RegNetCfg  # pylint: disable=g-import-not-at-top
  return RegNetCfg(**TINY_REGNET)


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _images(size, batch=2, seed=0):
  return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def _timm_forward(model, images):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.from_numpy(images)).numpy()


def _save_pth(state, path, wrap=False):
  import torch  # pylint: disable=g-import-not-at-top
  state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  torch.save({'model': state} if wrap else state, path)
  return str(path)


def _save_safetensors(state, path):
  numpy_io = pytest.importorskip('safetensors.numpy')
  numpy_io.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
  return str(path)


@pytest.fixture(name='tiny_regnet')
def _tiny_regnet(monkeypatch):
  """A tiny timm RegNetY and the same architecture registered in the zoo as 'regnet_tiny'."""
  reference = _timm_regnet()
  stages = _regnet_stages(reference)
  make = lambda num_classes, *, rngs, dtype=jnp.float32: regnet.RegNet(
      stages, num_classes, stem_width=TINY_REGNET['stem_width'], dtype=dtype, rngs=rngs)
  monkeypatch.setitem(models._REGISTRY, 'regnet_tiny', (make, stages[-1][0]))
  return reference


@pytest.mark.parametrize('distilled', [False, True])
@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_timm_vit_checkpoint_loads_and_gives_timms_logits(distilled, fmt, tmp_path, monkeypatch):
  reference = _timm_vit(distilled)
  name = 'deit_micro_distilled' if distilled else 'vit_micro_patch16_64'
  if distilled:
    monkeypatch.setitem(models._REGISTRY, name, (
        lambda n, *, rngs, dtype=jnp.float32: vit.VisionTransformer(
            n, distilled=True, dtype=dtype, rngs=rngs, **TINY_VIT), TINY_VIT['dim']))
  save = _save_pth if fmt == 'pth' else _save_safetensors
  path = save(_state_dict(reference), tmp_path / f'teacher.{fmt}')
  model = checkpoint.load_teacher(path, name, 10)
  images = _images(TINY_VIT['img_size'])
  logits, features = _run(model, images)
  np.testing.assert_allclose(logits, _timm_forward(reference, images), atol=2e-5, rtol=1e-4)
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    tokens = reference.forward_features(torch.from_numpy(images))
    pooled = reference.forward_head(tokens, pre_logits=True).numpy()
  np.testing.assert_allclose(features['pooled'], pooled, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(features['tokens'], tokens.numpy(), atol=2e-5, rtol=1e-4)
  if distilled:  # timm's distilled-training mode returns the two heads separately
    reference.set_distilled_training(True)
    reference.train()
    with torch.no_grad():
      cls_logits, dist_logits = reference(torch.from_numpy(images))
    np.testing.assert_allclose(features['cls_logits'], cls_logits.numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(features['dist_logits'], dist_logits.numpy(), atol=2e-5,
                               rtol=1e-4)
  train_logits, _ = _run(model, images, train=True)
  np.testing.assert_array_equal(train_logits, logits)  # no dropout, no BatchNorm


def test_timm_regnet_checkpoint_loads_and_gives_timms_logits(tiny_regnet, tmp_path):
  """DeiT's teacher file is {'model': state_dict}; running statistics land in place."""
  path = _save_pth(_state_dict(tiny_regnet), tmp_path / 'regnety.pth', wrap=True)
  model = checkpoint.load_teacher(path, 'regnet_tiny', 10)
  images = _images(32)
  logits, features = _run(model, images)
  np.testing.assert_allclose(logits, _timm_forward(tiny_regnet, images), atol=2e-5, rtol=1e-4)
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    pooled = tiny_regnet.forward_head(tiny_regnet.forward_features(torch.from_numpy(images)),
                                      pre_logits=True).numpy()
  np.testing.assert_allclose(features['pooled'], pooled, atol=2e-5, rtol=1e-4)
  tiny_regnet.train()  # training-mode BatchNorm: batch statistics, running stats updated
  train_logits, _ = _run(model, images, train=True)
  np.testing.assert_allclose(train_logits, _timm_forward(tiny_regnet, images), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(model.stem.bn.var[...], tiny_regnet.stem.bn.running_var.numpy(),
                             rtol=1e-5)


@pytest.mark.slow  # ~35 s on 2 cores
def test_drop_path_drops_whole_residual_branches_in_training_only():
  """drop_path_rate=1 with 2 blocks: rates linspace(0, 1, 2) = (0, 1), so in training the
  second block is the identity (as timm's DropPath(1.0) would make it); eval drops nothing."""
  model = vit.VisionTransformer(10, drop_path_rate=1.0, rngs=nnx.Rngs(0), **TINY_VIT)
  assert model.blocks[0].drop_path is None and model.blocks[1].drop_path.rate == 1.0
  # Shape-only builds (no init cost), filled with `model`'s weights.
  plain = nnx.merge(nnx.graphdef(nnx.eval_shape(
      lambda: vit.VisionTransformer(10, rngs=nnx.Rngs(1), **TINY_VIT))),
                    nnx.state(model, nnx.Param))
  shallow = nnx.eval_shape(
      lambda: vit.VisionTransformer(10, rngs=nnx.Rngs(1), **{**TINY_VIT, 'depth': 1}))
  shallow.patch_embed, shallow.norm, shallow.head = model.patch_embed, model.norm, model.head
  shallow.cls_token, shallow.pos_embed = model.cls_token, model.pos_embed
  shallow.blocks = nnx.List([model.blocks[0]])
  images = _images(TINY_VIT['img_size'])
  np.testing.assert_allclose(_run(model, images)[0], _run(plain, images)[0], atol=1e-6)
  np.testing.assert_allclose(_run(model, images, train=True)[0], _run(shallow, images)[0],
                             atol=1e-6)


def test_state_paths_follow_timm_names():
  expected = {
      'deit_tiny_distilled_patch16_224': ['cls_token', 'dist_token', 'pos_embed',
                                          'patch_embed.proj.kernel', 'blocks.11.attn.qkv.bias',
                                          'blocks.0.norm2.scale', 'head_dist.kernel'],
      'regnety_160': ['stem.conv.kernel', 's3.b11.se.fc2.bias', 's4.b1.downsample.bn.var',
                      'head.fc.kernel'],
  }
  for name, paths in expected.items():
    abstract = nnx.eval_shape(lambda n=name: models.create(n, 1000, rngs=nnx.Rngs(0)))
    flat = {'.'.join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(abstract))}
    assert set(paths) <= flat, set(paths) - flat


# ----------------------------------------------------------------- loader errors


def _one_line_error(path, model_name, num_classes=10):
  with pytest.raises(UserError) as error:
    checkpoint.load_teacher(path, model_name, num_classes)
  message = str(error.value)
  assert '\n' not in message
  return message


def test_wrong_architecture_and_class_count_are_one_line_errors(tmp_path):
  state = _state_dict(_timm_vit(distilled=False))
  safetensors_path = _save_safetensors(state, tmp_path / 'vit.safetensors')
  pth_path = _save_pth(state, tmp_path / 'vit.pth')
  message = _one_line_error(safetensors_path, 'imagenet_resnet18', 1000)
  assert message.startswith(f'safetensors checkpoint {safetensors_path} does not fit '
                            'imagenet_resnet18: missing key ')
  assert 'keys missing in all' in message
  message = _one_line_error(pth_path, 'deit_tiny_patch16_224')
  assert message.startswith(f'PyTorch checkpoint {pth_path} does not fit '
                            'deit_tiny_patch16_224: missing key blocks.2.')
  message = _one_line_error(safetensors_path, 'vit_micro_patch16_64', 1000)
  assert 'head.weight has 10 classes, expected 1000' in message


def test_safetensors_reader_reads_bfloat16_and_refuses_bad_files(tmp_path):
  torch = pytest.importorskip('torch')
  torch_io = pytest.importorskip('safetensors.torch')
  tensors = {'a': torch.randn(3, 4).to(torch.bfloat16), 'b': torch.arange(5)}
  path = tmp_path / 'w.safetensors'
  torch_io.save_file(tensors, str(path))
  read = safetensors_reader.read_safetensors(path)
  np.testing.assert_array_equal(read['a'].astype(np.float32), tensors['a'].float().numpy())
  np.testing.assert_array_equal(read['b'], np.arange(5))
  raw = path.read_bytes()
  for name, data in (('truncated', raw[:-3]), ('short', raw[:5]), ('garbage', b'x' * 64)):
    bad = tmp_path / f'{name}.safetensors'
    bad.write_bytes(data)
    with pytest.raises(UserError, match='cannot read safetensors checkpoint'):
      safetensors_reader.read_safetensors(bad)
  renamed = tmp_path / 'weights.bin'  # a hub file saved under another name
  renamed.write_bytes(raw)
  state, kind = torch_checkpoint.read_weights(str(renamed))
  assert kind == 'safetensors' and set(state) == {'a', 'b'}


# ----------------------------------------------------------------- precision, normalisation


def test_bfloat16_vit_keeps_float32_params_and_stays_close(micro_vit):
  abstract = nnx.eval_shape(lambda: models.create('vit_micro_patch16_64', 10,
                                                  rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
  model = nnx.merge(nnx.graphdef(abstract), nnx.state(micro_vit))  # same weights
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  images = _images(64)
  logits, features = _run(model, images)
  assert logits.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(logits, np.float32), _run(micro_vit, images)[0],
                             atol=0.05, rtol=0.05)
  assert np.all(np.isfinite(np.asarray(features['pooled'], np.float32)))


def test_wrong_image_size_is_a_user_error_naming_the_setting(micro_vit):
  with pytest.raises(UserError, match='config.data.image_size=64'):
    micro_vit(jnp.zeros((1, 32, 32, 3)), train=False)


def test_teacher_input_norm_maps_data_normalisation_to_the_teachers(micro_vit):
  model = micro_vit
  raw = np.random.RandomState(1).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
  data_mean, data_std = (np.asarray(c)[:, None, None] for c in input_norm.IMAGENET)
  wrapped = models.with_input_norm(model, *input_norm.IMAGENET, 'inception')
  assert isinstance(wrapped, input_norm.Renormalized)
  got, _ = _run(wrapped, (raw - data_mean) / data_std)
  expected, _ = _run(model, (raw - 0.5) / 0.5)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  assert models.with_input_norm(model, *input_norm.IMAGENET, 'data') is model
  assert models.with_input_norm(model, *input_norm.IMAGENET, 'imagenet') is model
  with pytest.raises(UserError, match='inception'):
    models.with_input_norm(model, *input_norm.IMAGENET, 'vit')


# ----------------------------------------------------------------- configs, tables


@pytest.mark.parametrize('pair,teacher', [('vits_res18', 'vit_small_patch16_224'),
                                          ('vitb_res18', 'vit_base_patch16_224')])
def test_vit_configs_follow_the_authors(pair, teacher):
  """ND ImageNet/ViT/train.sh: the per-teacher weights; train_*.py: the recipe."""
  kd_nd = imagenet_nd.get_config(f'kd_nd,{pair}')
  dkd_nd = imagenet_nd.get_config(f'dkd_nd,{pair}')
  expected_kd = {'vits_res18': (1.5, 1.0), 'vitb_res18': (2.0, 1.0)}[pair]
  expected_dkd = {'vits_res18': (1.0, 1.0, 2.0), 'vitb_res18': (1.4, 0.5, 2.0)}[pair]
  assert (kd_nd.method.kd_weight, kd_nd.method.nd_weight) == expected_kd
  assert (dkd_nd.method.alpha, dkd_nd.method.beta, dkd_nd.method.nd_weight) == expected_dkd
  assert dkd_nd.method.warmup_nd and kd_nd.method.warmup_epochs == 5
  for config in (kd_nd, dkd_nd, imagenet_kd.get_config(pair), imagenet_dkd.get_config(pair)):
    assert (config.teacher.model, config.student.model) == (teacher, 'imagenet_resnet18')
    assert (config.optim.lr, config.batch_size, config.num_epochs) == (0.2, 512, 100)
    assert tuple(config.optim.decay_epochs) == (30, 60, 90)
    assert config.method.temperature == 1.0 and config.data.image_size == 224
    assert (config.teacher.dtype, config.teacher.input_norm) == ('bfloat16', 'data')
    assert os.path.basename(config.teacher.checkpoint) in fetch_teachers.TIMM_TEACHERS
  for config in (kd_nd, dkd_nd):
    assert config.optim.nesterov and config.student.classifier_init == 'normal_0.01'
    assert config.method.head_init == 'normal_0.01'
  assert models.pooled_dim(teacher) == {'vits_res18': 384, 'vitb_res18': 768}[pair]


def test_timm_teacher_table_matches_zoo_and_configs():
  for name, (model_name, count, url) in fetch_teachers.TIMM_TEACHERS.items():
    assert PARAM_COUNTS[model_name] == count and name.startswith(model_name)
    assert url.startswith('https://') and url.rsplit('/', 1)[-1] in (name, 'model.safetensors')
  paths = {os.path.basename(p) for p in imagenet_common.TEACHER_PATHS.values()}
  assert {n for n in fetch_teachers.TIMM_TEACHERS if n.startswith('vit_')} <= paths


def test_published_transformer_numbers():
  assert published.lookup('KD++', 'vit_small_patch16_224', 'imagenet_resnet18') == 71.46
  assert published.lookup('DKD++', 'vit_base_patch16_224', 'imagenet_resnet18') == 71.69
  assert published.lookup('DeiT++', 'regnety_160', 'deit_base_distilled_patch16_224') == 83.6
  assert published.SOURCES[('KD', 'vit_base_patch16_224', 'imagenet_resnet18')].startswith(
      "ND authors' README")
  assert published.dataset_of('deit_base_distilled_patch16_224') == 'imagenet'
  config = imagenet_nd.get_config('dkd_nd,vits_res18').to_dict()
  assert published.for_config(config) == 71.33


def test_fetch_installs_a_timm_safetensors_teacher_from_its_url(tmp_path, monkeypatch):
  from tests import test_fetch_teachers  # pylint: disable=g-import-not-at-top
  state = _state_dict(_timm_vit(distilled=False, num_classes=1000))
  data = open(_save_safetensors(state, tmp_path / 'v.safetensors'), 'rb').read()
  server = test_fetch_teachers._Server()
  try:
    server.files['/timm/vit_micro/resolve/main/model.safetensors'] = data
    count = sum(v.size for v in state.values())
    monkeypatch.setattr(fetch_teachers, 'IMAGENET_TEACHERS', {})
    monkeypatch.setattr(fetch_teachers, 'TIMM_TEACHERS', {'vit_micro.safetensors': (
        'vit_micro_patch16_64', count,
        f'{server.url}/timm/vit_micro/resolve/main/model.safetensors')})
    root = tmp_path / 'ckpts'
    message = fetch_teachers.fetch_imagenet(fetch_teachers.IMAGENET_URL, str(root))
    assert '1 ImageNet teachers' in message
    assert os.listdir(root / 'imagenet_teachers') == ['vit_micro.safetensors']
  finally:
    server.httpd.shutdown()
    server.httpd.server_close()


# ----------------------------------------------------------------- slow: full size, smoke runs


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_small_patch16_224', 'deit_base_distilled_patch16_224',
                                  'regnety_160'])
def test_full_size_logits_match_timm_on_random_weights(name, tmp_path):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.manual_seed(0)
  reference = timm.create_model(name, pretrained=False, num_classes=1000).eval()
  path = _save_safetensors(_state_dict(reference), tmp_path / 'w.safetensors')
  model = checkpoint.load_teacher(path, name, 1000)
  images = _images(224, batch=1)
  logits, _ = _run(model, images)
  expected = _timm_forward(reference, images)
  np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max() + 1e-5,
                             rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('config_file,arg', [(imagenet_kd, 'smoke_vit'),
                                             (imagenet_dkd, 'smoke_vit'),
                                             (imagenet_nd, 'kd_nd,smoke_vit'),
                                             (imagenet_nd, 'dkd_nd,smoke_vit')])
def test_vit_smoke_configs_train_under_mock_imagenet(config_file, arg, tmp_path):
  """The ViT -> ResNet-18 configs' smoke variants through the grain pipeline of
  tfds.testing.mock_data, with a tiny ViT teacher (own input normalisation) saved first."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  teacher_dir = str(tmp_path / 'teacher')
  checkpoint.save_teacher(models.create('vit_micro_patch16_64', 1000, rngs=nnx.Rngs(1)),
                          teacher_dir, model_name='vit_micro_patch16_64', num_classes=1000)
  config = config_file.get_config(arg)
  config.data.update(dict(source='tfds', num_threads=1))
  config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
  config.batch_size, config.eval_batch_size = 8, 8
  with tfds.testing.mock_data(num_examples=16):
    result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result.finished and math.isfinite(result.last_top1)
  assert result.teacher_top1 is not None
  if 'nd' in arg:  # class means cached under the teacher's own normalisation
    assert any(f.endswith('.inception_input.npy') for f in os.listdir(teacher_dir))


@pytest.mark.slow
def test_imagenet_step_benchmark_reports_a_ratio():
  from benchmarks import imagenet_step  # pylint: disable=g-import-not-at-top
  records = imagenet_step.run('imagenet_kd', ['smoke', 'smoke_vit'], batch_size=8, steps=1,
                              repeats=1, image_size=64)
  measured = [r for r in records if r['kind'] == 'measurement']
  assert [r['teacher'] for r in measured] == ['imagenet_resnet18', 'vit_micro_patch16_64']
  assert measured[1]['teacher_dtype'] == 'bfloat16'  # the config's own
  (ratio,) = [r for r in records if r['kind'] == 'ratio']
  assert ratio['step_time_ratio'] > 0 and ratio['denominator'] == 'smoke'


@pytest.mark.parametrize('name', ['fitnet', 'at', 'nst', 'sp', 'vid', 'kdsvd', 'ofd', 'reviewkd'])
def test_feature_map_methods_refuse_a_transformer_in_one_line(name):
  """A ViT has no spatial stages: every method that distils feature maps says so when
  the config is checked, before anything is built."""
  from kd_jax import methods, validate  # pylint: disable=g-import-not-at-top
  config = imagenet_kd.get_config('smoke_vit')
  config.method = methods.defaults(name)
  with pytest.raises(UserError, match=f"method '{name}' distils feature maps, and the teacher "
                                      "vit_micro_patch16_64 \\(a transformer\\) has none"):
    validate.check(config)
  config.teacher.model = 'imagenet_resnet18'
  for embedding_method in ('pkt', 'rkd'):
    config.method = methods.defaults(embedding_method)
    config.teacher.model = 'vit_micro_patch16_64'
    validate.check(config)  # pooled features: fine with a ViT
