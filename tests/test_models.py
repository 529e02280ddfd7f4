"""Model zoo: exact parameter counts (METHODS.md section 7), shapes, modes, sharding.

Parameter counts use nnx.eval_shape (nothing allocated); forward passes run on one
small model per family, the full sweep is marked slow.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kd_jax import models
from kd_jax.errors import UserError
from kd_jax.models import layers

PARAM_COUNTS = {
    # 100 classes (METHODS.md section 7).
    'resnet20': 278_324, 'resnet32': 472_756, 'resnet56': 861_620,
    'resnet110': 1_736_564, 'resnet8x4': 1_233_540, 'resnet32x4': 7_433_860,
    'ResNet50': 23_705_252, 'wrn_16_2': 703_284, 'wrn_40_1': 569_780,
    'wrn_40_2': 2_255_156, 'vgg8': 3_965_028, 'vgg13': 9_462_180,
    'MobileNetV2': 812_836, 'ShuffleV1': 949_258, 'ShuffleV2': 1_355_528,
    # 1000 classes (torchvision / CRD).
    'imagenet_resnet18': 11_689_512, 'imagenet_resnet34': 21_797_672,
    'imagenet_resnet50': 25_557_032, 'imagenet_mobilenetv1': 4_231_976,
}
# Forward passes by default on a cheap subset covering basic, pre-activation, VGG,
# grouped/depthwise and ImageNet-stem code; every model runs in the slow sweep (model
# creation compiles one initializer per parameter shape, which dominates on CPU).
# Every model's forward runs in the slow suite (test_forward_shapes_all_models); by default
# the cheapest of the residual, wide and plain families.
FORWARD_SUBSET = ('resnet8', 'wrn_16_1')


def _num_classes(name):
  return 1000 if name.startswith('imagenet_') else 100


def _images(name, batch=2, seed=0):
  size = 64 if name.startswith('imagenet_') else 32
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


def _count_params(name):
  abstract = nnx.eval_shape(
      lambda: models.create(name, _num_classes(name), rngs=nnx.Rngs(0)))
  return sum(math.prod(leaf.shape)
             for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_parameter_count_is_exact(name):
  assert _count_params(name) == PARAM_COUNTS[name]


def test_names_are_sorted_and_extra_models_build():
  assert models.names() == sorted(models.names())
  assert set(PARAM_COUNTS) <= set(models.names())
  for name in set(models.names()) - set(PARAM_COUNTS):  # resnet8, vgg11, ... too
    if not name.startswith(('vit_', 'deit_', 'regnet', 'faster_rcnn_')):  # counted in
      # test_transformers.py; the detectors' networks in test_detection_backbones.py
      assert _count_params(name) > 0


def test_unknown_name_is_a_user_error_listing_valid_names():
  with pytest.raises(UserError, match='resnet8x4'):
    models.create('resnet9000', rngs=nnx.Rngs(0))
  with pytest.raises(UserError):
    models.pooled_dim('resnet9000')


def _check_forward(name):
  model = models.create(name, _num_classes(name), rngs=nnx.Rngs(0))
  logits, features = model(_images(name), train=False)
  assert logits.shape == (2, _num_classes(name))
  assert features['pooled'].shape == (2, models.pooled_dim(name))
  assert len(features['stages']) == len(features['preact_stages']) >= 4
  for stage, preact in zip(features['stages'], features['preact_stages']):
    assert stage.ndim == 4 and stage.shape == preact.shape
  assert np.all(np.isfinite(logits))
  assert np.all(np.asarray(features['pooled']) >= 0)  # after the last ReLU


@pytest.mark.parametrize('name', FORWARD_SUBSET)
def test_forward_shapes(name):
  _check_forward(name)


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in models.names()  # ViT/DeiT: test_transformers.py
                                  if not n.startswith(('vit_', 'deit_'))
                                  and n not in models.DETECTORS])  # test_faster_rcnn.py
def test_forward_shapes_all_models(name):
  _check_forward(name)


def test_stage_shapes_follow_mdistiller():
  """Shapes only: the model and its forward are traced (eval_shape), nothing compiled."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.create('resnet8x4',
                                                                   rngs=nnx.Rngs(0))))
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  _, features = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False),
                               state, images)
  assert [s.shape for s in features['stages']] == [
      (2, 32, 32, 32), (2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256)]


def test_state_paths_mirror_pytorch_names():
  expected = {
      'resnet8': [('layer2', 0, 'downsample', 0, 'kernel'),
                  ('layer2', 0, 'downsample', 1, 'mean'), ('fc', 'kernel')],
      'ResNet50': [('layer1', 0, 'shortcut', 1, 'var'), ('linear', 'bias')],
      'wrn_16_2': [('block1', 'layer', 0, 'convShortcut', 'kernel'),
                   ('bn1', 'scale')],
      'vgg13': [('block1', 3, 'kernel'), ('block1', 4, 'scale'),
                ('classifier', 'kernel')],
      'MobileNetV2': [('blocks', 6, 0, 'conv', 7, 'mean'), ('conv2', 0, 'kernel'),
                      ('classifier', 0, 'kernel')],
      'ShuffleV2': [('layer1', 0, 'conv5', 'kernel'), ('layer3', 3, 'bn3', 'var')],
      'imagenet_resnet50': [('layer4', 0, 'downsample', 1, 'scale')],
      'imagenet_mobilenetv1': [('model', 13, 3, 'kernel'), ('model', 0, 1, 'mean')],
  }
  for name, paths in expected.items():
    abstract = nnx.eval_shape(
        lambda n=name: models.create(n, _num_classes(n), rngs=nnx.Rngs(0)))
    flat = {path for path, _ in nnx.to_flat_state(nnx.state(abstract))}
    for path in paths:
      assert path in flat, (name, path)


def _batch_stats(model):
  return jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))


def test_train_updates_running_stats_and_eval_does_not():
  model = models.create('resnet8', rngs=nnx.Rngs(0))
  images = _images('resnet8', batch=4)
  before = _batch_stats(model)
  model(images, train=False)
  after_eval = _batch_stats(model)
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  train_logits, _ = model(images, train=True)
  after_train = _batch_stats(model)
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.allclose(a, b), before, after_train))
  assert all(changed)
  eval_logits, _ = model(images, train=False)
  assert not np.allclose(train_logits, eval_logits)  # batch vs running statistics


def test_batchnorm_running_stats_match_pytorch_update():
  """momentum 0.1 (PyTorch terms) with the unbiased variance in running_var."""
  bn = layers.batch_norm(3, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 4, 5, 3)) * 2.0 + 1.0
  bn(x, use_running_average=False)
  flat = np.asarray(x).reshape(-1, 3)
  np.testing.assert_allclose(bn.mean[...], 0.1 * flat.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)


def test_grouped_batchnorm_normalises_each_group_and_tracks_the_first():
  """bn_group_size: per-group batch statistics (NumPy), running stats from group 0 only
  with PyTorch's unbiased variance, as nn.DataParallel's replica on device 0 updates them."""
  x = np.random.default_rng(0).normal(2.0, 3.0, (12, 3, 3, 4)).astype(np.float32)
  bn = layers.batch_norm(4, dtype=jnp.float32, rngs=nnx.Rngs(0))
  bn.scale[...], bn.bias[...] = jnp.full(4, 1.5), jnp.full(4, -0.5)
  layers.set_batch_norm_groups(bn, 4)
  y = np.asarray(bn(jnp.asarray(x), use_running_average=False))
  groups = x.reshape(3, 4 * 9, 4)  # 3 groups of 4 samples x 9 pixels
  expected = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, (1.5 * expected - 0.5).reshape(x.shape), atol=2e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * groups[0].mean(0), rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * groups[0].var(0, ddof=1), rtol=1e-5)
  # group_size = the batch is the plain layer; eval mode ignores groups.
  whole = layers.batch_norm(4, dtype=jnp.float32, rngs=nnx.Rngs(0))
  grouped = layers.set_batch_norm_groups(layers.batch_norm(4, dtype=jnp.float32, rngs=nnx.Rngs(0)), 12)
  np.testing.assert_allclose(grouped(x, use_running_average=False),
                             whole(x, use_running_average=False), atol=1e-5)
  running = (x - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + 1e-5)
  np.testing.assert_allclose(bn(x, use_running_average=True), 1.5 * running - 0.5, atol=2e-5)


@pytest.mark.parametrize("scheme", ["normal_0.01", "zero_bias", "normal_0.01_zero_bias"])
def test_classifier_init_schemes(scheme):
  zoo = models.create("resnet20", 100, rngs=nnx.Rngs(0))
  model = models.create("resnet20", 100, rngs=nnx.Rngs(0), classifier_init=scheme)
  kernel, bias = np.asarray(model.fc.kernel[...]), np.asarray(model.fc.bias[...])
  if scheme == "zero_bias":
    np.testing.assert_array_equal(kernel, zoo.fc.kernel[...])
  else:
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.001
  if scheme.endswith("zero_bias"):
    assert not bias.any()
  else:
    assert abs(bias.std() - 0.01) < 0.003
  np.testing.assert_array_equal(model.conv1.kernel[...], zoo.conv1.kernel[...])  # rest as the zoo
  with pytest.raises(UserError, match="classifier_init"):
    models.create("resnet20", 100, rngs=nnx.Rngs(0), classifier_init="xavier")


def test_bfloat16_forward_is_finite_with_float32_params():
  """The bfloat16 model as created (traced: nnx.eval_shape) has float32 parameters and
  statistics; it runs on the float32 model's values (one initialisation, not two: the
  same Rngs give both the same values) in one jit per mode, not op by op."""
  images = _images('resnet8')
  abstract = nnx.eval_shape(lambda: models.create('resnet8', rngs=nnx.Rngs(0),
                                                  dtype=jnp.bfloat16))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  float_model = models.create('resnet8', rngs=nnx.Rngs(0))
  model = nnx.merge(nnx.graphdef(abstract), nnx.state(float_model))
  forward = nnx.jit(lambda model, images, train: model(images, train=train),
                    static_argnames='train')
  for train in (False, True):
    logits, features = forward(model, images, train=train)
    float_logits, _ = forward(float_model, images, train=train)
    assert logits.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(features['pooled'], np.float32)))
    np.testing.assert_allclose(np.asarray(logits, np.float32), float_logits,
                               atol=0.05, rtol=0.05)
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert all(s.dtype == jnp.float32 for s in stats)


def test_sharded_forward_equals_single_device():
  """Batch on a ('data',) mesh of 8 devices, params replicated: same logits and stats."""
  assert jax.device_count() == 8
  model = models.create('resnet8', rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  images = _images('resnet8', batch=16)

  @jax.jit
  def forward(state, images):
    model = nnx.merge(graphdef, state)
    outputs = model(images, train=True)
    eval_logits, _ = model(images, train=False)
    return outputs, eval_logits, nnx.state(model, nnx.BatchStat)

  mesh = jax.make_mesh((8,), ('data',))
  sharded_state = jax.device_put(state, NamedSharding(mesh, P()))
  sharded_images = jax.device_put(images, NamedSharding(mesh, P('data')))
  (logits, feats), eval_logits, stats = forward(sharded_state, sharded_images)
  assert len(logits.sharding.device_set) == 8

  single = jax.devices()[0]
  (ref_logits, ref_feats), ref_eval, ref_stats = forward(
      jax.device_put(state, single), jax.device_put(images, single))
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats['pooled'], ref_feats['pooled'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eval_logits, ref_eval, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats, ref_stats)


def _nchw(x):
  return np.array(np.transpose(np.asarray(x), (0, 3, 1, 2)))


@pytest.mark.parametrize('kernel,stride,padding,groups', [
    (3, 2, 1, 1), (7, 2, 3, 1), (1, 2, 0, 1), (3, 2, 1, 6), (1, 1, 0, 3)])
def test_conv_matches_pytorch_with_documented_weight_layout(kernel, stride, padding,
                                                             groups):
  torch = pytest.importorskip('torch')
  conv = layers.conv(6, 12, kernel, stride=stride, padding=padding, groups=groups,
                     bias=True, bias_init=layers.torch_default_bias(6),
                     dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 11, 11, 6))
  # Conv weight (O, I/groups, kh, kw) <-> kernel (kh, kw, I/groups, O).
  weight = torch.from_numpy(np.array(np.transpose(conv.kernel[...], (3, 2, 0, 1))))
  expected = torch.nn.functional.conv2d(
      torch.from_numpy(_nchw(x)), weight, torch.from_numpy(np.array(conv.bias[...])),
      stride=stride, padding=padding, groups=groups)
  np.testing.assert_allclose(_nchw(conv(x)), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_pooling_and_shuffle_match_pytorch():
  torch = pytest.importorskip('torch')
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
  tx = torch.from_numpy(_nchw(x))
  f = torch.nn.functional
  np.testing.assert_allclose(_nchw(layers.max_pool(x, 3, 2, 1)),
                             f.max_pool2d(tx, 3, 2, 1).numpy(), rtol=1e-6)
  np.testing.assert_allclose(_nchw(layers.avg_pool(x, 3, 2, 1)),
                             f.avg_pool2d(tx, 3, 2, 1).numpy(), rtol=1e-5, atol=1e-6)
  shuffled = tx.reshape(2, 3, 2, 9, 9).permute(0, 2, 1, 3, 4).reshape(2, 6, 9, 9)
  np.testing.assert_array_equal(_nchw(layers.channel_shuffle(x, 3)), shuffled.numpy())


@pytest.mark.parametrize("name", [
    "vgg8",  # max-pooling
    pytest.param("imagenet_resnet18", marks=pytest.mark.slow),
    pytest.param("ShuffleV1", marks=pytest.mark.slow),
    pytest.param("ShuffleV2", marks=pytest.mark.slow),
    pytest.param("MobileNetV2", marks=pytest.mark.slow),
    pytest.param("wrn_16_1", marks=pytest.mark.slow),
    pytest.param("ResNet50", marks=pytest.mark.slow),
])
def test_every_family_is_differentiable_in_train_mode(name):
  """A train-mode gradient exists, is finite and reaches the first layer's weights."""
  model = models.create(name, 10, rngs=nnx.Rngs(0))
  size = 64 if name.startswith("imagenet") else 32
  images = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def gradients(params, rest):
    def loss(model):
      logits, _ = model(images, train=True)
      return jnp.sum(logits ** 2)
    return nnx.grad(loss)(nnx.merge(graphdef, params, rest))

  leaves = jax.tree.leaves(gradients(params, rest))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(leaves[0]).sum() + jnp.abs(leaves[-1]).sum()) > 0
