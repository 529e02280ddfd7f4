"""VID, KDSVD and OFD (METHODS.md 9): the pure losses against NCHW NumPy references, the
method totals against their formulas assembled by hand, the BatchNorm-before-ReLU of every
model, the extras of every CIFAR pair, one real train step each, and the smoke configs."""
import functools
import os
import subprocess
import sys
import types

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cifar_common, cifar_kdsvd, cifar_ofd, cifar_vid
from kd_jax import data, losses, methods, models, train
from kd_jax.data import augment, feeders
from kd_jax.errors import UserError
from kd_jax.losses import svd as svd_lib
from kd_jax.losses.vid import vid_log_scale
from kd_jax.methods import Aux, ModelOutput, Setup
from kd_jax.metrics import read_metrics
from kd_jax.models import layers
from kd_jax.tools import published, recipe
from tests import loss_reference as ref
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = 4


def _array(seed, shape, scale=1.0, relu=False):
  x = np.random.default_rng(seed).normal(size=shape) * scale
  return (np.maximum(x, 0.0) if relu else x).astype(np.float32)


def _central_difference(fn, x, index, h=1e-4):
  plus, minus = x.astype(np.float64), x.astype(np.float64)
  plus[index] += h
  minus[index] -= h
  return (fn(plus) - fn(minus)) / (2 * h)


# ------------------------------------------------------------------------------ losses


@functools.lru_cache(maxsize=None)
def _vid_grad():
  return jax.jit(jax.value_and_grad(losses.vid, argnums=(0, 1, 2)))


@pytest.mark.parametrize("teacher_size", [4, 6])  # equal; larger (pooled 6 -> 4, overlapping bins)
def test_vid_matches_reference_and_gradients(teacher_size):
  mean, teacher = _array(0, (B, 4, 4, 3)), _array(1, (B, teacher_size, teacher_size, 3))
  log_scale = _array(2, (3,))
  value, (grad_mean, grad_teacher, grad_scale) = _vid_grad()(mean, teacher, log_scale)
  np.testing.assert_allclose(value, ref.vid(mean, teacher, log_scale), rtol=1e-5)
  np.testing.assert_array_equal(grad_teacher, 0.0)
  for index in [(0, 0, 0, 0), (3, 2, 1, 2)]:
    expected = _central_difference(lambda m: ref.vid(m, teacher, log_scale), mean, index)
    np.testing.assert_allclose(grad_mean[index], expected, rtol=1e-3, atol=1e-6)
  expected = _central_difference(lambda s: ref.vid(mean, teacher, s), log_scale, (1,))
  np.testing.assert_allclose(grad_scale[1], expected, rtol=1e-3)
  # The initial log_scale makes the variance init_pred_var: 0.5 log 5 for a perfect mean.
  start = jnp.full((3,), vid_log_scale(5.0, 1e-5))
  assert float(losses.vid(teacher[:, :4, :4], teacher[:, :4, :4], start)) == pytest.approx(
      0.5 * np.log(5.0), rel=1e-6)


# KDSVD: stages of unequal width (pooled), a student with more singular vectors than
# the W of the last stage (2 columns for K+3 = 4), ReLU maps as the method sees.
SVD_STUDENT = [(B, 8, 8, 3), (B, 4, 4, 5), (B, 2, 2, 6)]
SVD_TEACHER = [(B, 8, 8, 4), (B, 8, 8, 2), (B, 2, 2, 3)]


def _svd_maps(seed, shapes):
  return [_array(seed + i, shape, relu=True) for i, shape in enumerate(shapes)]


@functools.lru_cache(maxsize=None)
def _kdsvd_grad():
  return jax.jit(jax.value_and_grad(losses.kdsvd, argnums=(0, 1)))


def test_kdsvd_matches_reference_and_finite_differences():
  student, teacher = _svd_maps(10, SVD_STUDENT), _svd_maps(20, SVD_TEACHER)
  value, (grads, teacher_grads) = _kdsvd_grad()(student, teacher)
  expected = ref.kdsvd(student, teacher)
  assert expected > 1e-3  # a loss that tells a wrong term apart
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  for grad in teacher_grads:
    np.testing.assert_array_equal(grad, 0.0)
  for stage, index in [(0, (0, 3, 2, 1)), (1, (2, 1, 0, 4)), (2, (3, 1, 1, 5))]:
    def loss(x, stage=stage):
      maps = list(student)
      maps[stage] = x
      return ref.kdsvd(maps, teacher)
    expected = _central_difference(loss, student[stage], index, h=1e-3)
    np.testing.assert_allclose(grads[stage][index], expected, rtol=2e-2,
                               atol=2e-3 * max(np.abs(g).max() for g in grads))


def test_kdsvd_is_blind_to_the_backend_sign_of_singular_vectors():
  """Flipping V's sign (what another SVD backend may return) changes nothing: the teacher's
  vectors are oriented, the student's aligned with sign."""
  student, teacher = _svd_maps(10, SVD_STUDENT), _svd_maps(20, SVD_TEACHER)
  original = svd_lib.singular_values_and_right_vectors

  def flipped(x):
    s, v = original(x)
    return s, -v

  svd_lib.singular_values_and_right_vectors = flipped
  try:
    value = jax.jit(losses.kdsvd)(student, teacher)
  finally:
    svd_lib.singular_values_and_right_vectors = original
  np.testing.assert_allclose(value, _kdsvd_grad()(student, teacher)[0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 12, 5), (2, 4, 7)])  # m > n (KDSVD's case), m < n
def test_svd_derivative_is_jaxs_away_from_repeated_values_and_finite_at_them(shape):
  x = _array(30, shape)
  r = min(shape[1:])
  weights_s, weights_v = _array(31, (shape[0], r)), _array(32, (shape[0], shape[2], r))

  def objective(decompose, x):
    s, v = decompose(x)
    v = v * jnp.sign(v[..., :1, :])  # sign-invariant, as what uses V must be
    return jnp.sum(s * weights_s) + jnp.sum(v * weights_v)

  def by_jax(x):
    _, s, vt = jnp.linalg.svd(x, full_matrices=False)
    return s, jnp.swapaxes(vt, -1, -2)

  grad = jax.jit(jax.grad(objective, argnums=1), static_argnums=0)
  ours = grad(svd_lib.singular_values_and_right_vectors, x)
  np.testing.assert_allclose(ours, grad(by_jax, x), rtol=1e-4, atol=1e-5)
  zeros = jnp.zeros(shape)  # every singular value 0: JAX's own rule gives NaN
  assert not np.all(np.isfinite(grad(by_jax, zeros)))
  assert np.all(np.isfinite(grad(svd_lib.singular_values_and_right_vectors, zeros)))


@pytest.mark.parametrize("case", ["zero_student", "all_zero", "identical", "rank_one",
                                  "bfloat16"])
def test_kdsvd_finite_on_degenerate_maps(case):
  student, teacher = _svd_maps(10, SVD_STUDENT), _svd_maps(20, SVD_TEACHER)
  if case == "zero_student":
    student = [np.zeros_like(s) for s in student]
  elif case == "all_zero":
    student, teacher = [np.zeros_like(s) for s in student], [np.zeros_like(t) for t in teacher]
  elif case == "identical":
    student = teacher
  elif case == "rank_one":  # every column equal: W - 1 repeated zero singular values
    student = [np.broadcast_to(s[:, :, :1], s.shape).copy() for s in student]
  else:
    student = [jnp.asarray(s, jnp.bfloat16) for s in student]
  value, (grads, _) = _kdsvd_grad()(student, teacher)
  assert value.dtype == jnp.float32 and np.isfinite(float(value))
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
  if case == "identical":
    assert float(value) == pytest.approx(0.0, abs=1e-6)


def test_ofd_margin_matches_mdistiller_loop():
  scale = np.array([1.0, -0.5, 2.0, 0.3, 1e-3, 0.7], np.float32)
  bias = np.array([0.0, 0.2, -1.0, 1.5, 0.01, 5.0], np.float32)  # last two: P(x<0) <= 0.001
  margin = losses.ofd_margin(scale, bias)
  assert margin.dtype == np.float32
  np.testing.assert_allclose(margin, ref.ofd_margin(scale, bias), rtol=1e-6)
  assert margin[-1] == pytest.approx(-3 * 0.7) and margin[-2] == pytest.approx(-3e-3)
  # A zero scale (mdistiller divides by zero): the formula's limit, min(bias, 0).
  np.testing.assert_array_equal(losses.ofd_margin([0.0, 0.0, 0.0], [-0.4, 0.0, 2.0]),
                                np.array([-0.4, 0.0, 0.0], np.float32))


@functools.lru_cache(maxsize=None)
def _ofd_grad():
  return jax.jit(jax.value_and_grad(losses.ofd, argnums=(0, 1)))


@pytest.mark.parametrize("teacher_size", [4, 7, 2])  # equal, larger (pooled), smaller (repeated)
def test_ofd_matches_reference(teacher_size):
  student = _array(40, (B, 4, 4, 5))
  teacher = _array(41, (B, teacher_size, teacher_size, 5))
  margin = -np.abs(_array(42, (5,)))
  value, (grad, teacher_grad) = _ofd_grad()(student, teacher, margin)
  np.testing.assert_allclose(value, ref.ofd(student, teacher, margin), rtol=1e-5)
  np.testing.assert_array_equal(teacher_grad, 0.0)
  for index in [(0, 1, 2, 3), (3, 0, 0, 0)]:
    expected = _central_difference(lambda s: ref.ofd(s, teacher, margin), student, index)
    np.testing.assert_allclose(grad[index], expected, rtol=1e-3, atol=1e-5)
  bf16 = _ofd_grad()(jnp.asarray(student, jnp.bfloat16), teacher, margin)[0]
  assert bf16.dtype == jnp.float32 and np.isfinite(float(bf16))


# ------------------------------------------------------------------------------ methods


def _method(**fields):
  return methods.create(ml_collections.ConfigDict(methods.defaults(**fields)))


def _fake_setup(student_shapes, teacher_shapes, teacher=None, rngs=None):
  """A Setup whose feature shapes are given: a features dict, or a list of NHWC shapes
  (stem first) used for both 'stages' and 'preact_stages'."""
  teacher = teacher or types.SimpleNamespace()
  student = types.SimpleNamespace()

  def features(shapes):
    if isinstance(shapes, dict):
      return shapes
    structs = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
    return {"stages": structs, "preact_stages": structs}

  shapes = {id(student): features(student_shapes), id(teacher): features(teacher_shapes)}
  return types.SimpleNamespace(student=student, teacher=teacher, rngs=rngs or nnx.Rngs(0),
                               feature_shapes=lambda model: shapes[id(model)])


def _output(seed, shapes, logits=True, relu=False):
  maps = tuple(jnp.asarray(_array(seed + i, s, relu=relu)) for i, s in enumerate(shapes))
  logit = jnp.asarray(_array(seed + 99, (B, 10), 2.0)) if logits else None
  return ModelOutput(logit, {"stages": maps, "preact_stages": maps})


LABELS = jnp.asarray([1, 0, 3, 9])


def _ce(logits):
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  return -np.mean(log_p[np.arange(B), np.asarray(LABELS)])


def _kernel(conv):
  return np.asarray(conv.kernel[...], np.float64)[0, 0]  # 1x1: [in, out]


def test_vid_total_is_ce_plus_sum_of_stage_terms():
  """Stages paired from the first (the teacher's 4th unused); a larger student map pooled
  before its regressor, a larger teacher map pooled in the loss."""
  student_shapes = [(B, 8, 8, 2), (B, 8, 8, 4), (B, 4, 4, 6), (B, 2, 2, 8)]
  teacher_shapes = [(B, 8, 8, 3), (B, 4, 4, 5), (B, 4, 4, 6), (B, 4, 4, 7), (B, 2, 2, 3)]
  method = _method(name="vid", ce_weight=0.5, feat_weight=2.0)
  extras = method.extras(_fake_setup(student_shapes, teacher_shapes))
  assert [stage.log_scale[...].shape for stage in extras.stages] == [(5,), (6,), (7,)]
  assert isinstance(extras.stages[0].log_scale, nnx.Param)
  student, teacher = _output(50, student_shapes, relu=True), _output(60, teacher_shapes, relu=True)
  total, metrics = jax.jit(lambda e: method.loss(student, teacher, LABELS, 0, Aux(e)))(extras)
  vid = 0.0
  for s, t, stage in zip(student.features["stages"][1:], teacher.features["stages"][1:],
                         extras.stages):
    s = ref.nchw(s)
    if s.shape[2] > t.shape[1]:
      s = ref.adaptive_avg_pool_nchw(s, t.shape[1], t.shape[2])
    s = s.transpose(0, 2, 3, 1)
    w1, w2, w3 = (_kernel(stage.regressor[i]) for i in (0, 2, 4))
    mean = np.maximum(np.maximum(s @ w1, 0) @ w2, 0) @ w3
    vid += ref.vid(mean, t, stage.log_scale[...])
  assert float(total) == pytest.approx(0.5 * _ce(student.logits) + 2.0 * vid, rel=1e-5)
  assert float(metrics["vid"]) == pytest.approx(2.0 * vid, rel=1e-5)
  assert float(extras.stages[0].log_scale[0]) == pytest.approx(np.log(np.exp(5 - 1e-5) - 1))
  fixed = _method(name="vid", learn_variance=False).extras(
      _fake_setup(student_shapes, teacher_shapes))
  assert not isinstance(fixed.stages[0].log_scale, nnx.Param)  # mdistiller: never trained


def test_kdsvd_total_is_ce_plus_kdsvd_of_feats_after_the_stem():
  student_shapes = [(B, 8, 8, 2)] + SVD_STUDENT
  teacher_shapes = [(B, 8, 8, 3)] + SVD_TEACHER
  method = _method(name="kdsvd", ce_weight=1.0, feat_weight=3.0)
  assert method.extras(None) is None and method.k == 1
  student, teacher = _output(70, student_shapes, relu=True), _output(80, teacher_shapes, relu=True)
  total, metrics = jax.jit(lambda: method.loss(student, teacher, LABELS, 0, Aux()))()
  expected = ref.kdsvd(student.features["stages"][1:], teacher.features["stages"][1:])
  assert float(total) == pytest.approx(_ce(student.logits) + 3.0 * expected, rel=1e-4)
  assert float(metrics["kdsvd"]) == pytest.approx(3.0 * expected, rel=1e-4)


def test_ofd_total_margins_and_connectors():
  """Teacher with 4 stages, student with 3: the last 3 of each, and the margins of the
  teacher's last 3 BatchNorms; stage terms halved from the last; connectors BN on batch
  statistics; teacher maps pooled (here repeated) to the student's size."""
  student_shapes = [(B, 8, 8, 2), (B, 8, 8, 4), (B, 4, 4, 6), (B, 2, 2, 8)]
  teacher_shapes = [(B, 8, 8, 3), (B, 8, 8, 9), (B, 4, 4, 5), (B, 2, 2, 6), (B, 1, 1, 7)]
  bns = []
  for i, shape in enumerate(teacher_shapes[1:]):
    bn = layers.batch_norm(shape[-1], dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = _array(90 + i, shape[-1:]), _array(95 + i, shape[-1:])
    bns.append(bn)
  teacher_model = types.SimpleNamespace(bn_before_relu=lambda: bns)
  method = _method(name="ofd")
  assert (method.ce_weight, method.feat_weight, method.teacher_batch_statistics) == (1.0, 1e-3, True)
  setup = _fake_setup(student_shapes, teacher_shapes, teacher_model)
  extras, frozen = method.extras(setup), method.frozen(setup)
  margins = [ref.ofd_margin(bn.scale[...], bn.bias[...]) for bn in bns[1:]]
  assert [m.shape for m in frozen["margins"]] == [(5,), (6,), (7,)]
  for got, expected in zip(frozen["margins"], margins):
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert [_kernel(c.conv).shape for c in extras.connectors] == [(4, 5), (6, 6), (8, 7)]
  student, teacher = _output(100, student_shapes), _output(110, teacher_shapes)
  before = nnx.clone(extras)
  total, metrics = jax.jit(lambda e: method.loss(student, teacher, LABELS, 0, Aux(e, frozen)))(
      extras)
  ofd = 0.0
  for i, (s, t, connector, margin) in enumerate(zip(
      student.features["preact_stages"][1:], teacher.features["preact_stages"][2:],
      before.connectors, margins)):
    y = np.asarray(s, np.float64) @ _kernel(connector.conv)
    y = (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-5)  # BN: weight 1, bias 0
    ofd += ref.ofd(y, t, margin) / 2 ** (2 - i)
  assert float(total) == pytest.approx(_ce(student.logits) + 1e-3 * ofd, rel=1e-5)
  assert float(metrics["ofd"]) == pytest.approx(1e-3 * ofd, rel=1e-5)
  assert not _method(name="ofd", teacher_bn="running").teacher_batch_statistics
  assert not _method(name="vid").teacher_batch_statistics


# -------------------------------------------------------------------------------- models


@functools.lru_cache(maxsize=None)
def _abstract(name):
  return nnx.eval_shape(lambda: models.create(name, 100, rngs=nnx.Rngs(0)))


@functools.lru_cache(maxsize=None)
def _feature_shapes(name):
  """Setup.feature_shapes of model `name` (traced, not run); ImageNet models at 64 px."""
  size = 64 if name.startswith("imagenet") else 32
  return Setup(None, None, types.SimpleNamespace(
      info=types.SimpleNamespace(image_size=size)), None).feature_shapes(_abstract(name))


def test_ofd_with_a_teacher_without_batchnorm_margins_is_a_user_error():
  shapes = [(B, 8, 8, 2), (B, 8, 8, 4), (B, 4, 4, 6)]
  setup = _fake_setup(shapes, shapes, types.SimpleNamespace())
  with pytest.raises(UserError, match="OFD needs a CNN teacher"):
    _method(name="ofd").frozen(setup)


# The CNN zoo (METHODS.md 7, 9); transformers and timm's RegNet have no OFD margins.
CNN_NAMES = [name for name in models.names()
             if not name.startswith(("vit_", "deit_", "regnety_")) and name not in models.DETECTORS]


@pytest.mark.parametrize("name", CNN_NAMES)
def test_bn_before_relu_has_one_batchnorm_per_ofd_stage(name):
  model = _abstract(name)
  if name == "ShuffleV2":  # half of each preact stage bypasses every BatchNorm (mdistiller)
    with pytest.raises(UserError, match="cannot be an OFD teacher"):
      model.bn_before_relu()
    return
  preacts = _feature_shapes(name)["preact_stages"]
  bns = model.bn_before_relu()
  assert len(bns) == len(preacts) - 1
  assert all(isinstance(bn, layers.BatchNorm) for bn in bns)
  assert [bn.num_features for bn in bns] == [p.shape[-1] for p in preacts[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "ResNet18", "wrn_16_1", "vgg8", "MobileNetV2",
                                  "ShuffleV1", "imagenet_resnet50", "imagenet_mobilenetv1"])
def test_bn_before_relu_feeds_its_preact_stage(name):
  """Shifting that BatchNorm's bias by d shifts its pre-ReLU stage by exactly d (eval mode):
  the BN output reaches the stage with only an addition of something else."""
  model = models.create(name, 10, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  images = jnp.asarray(_array(120, (2, 32, 32, 3)))
  preacts = jax.jit(lambda s: nnx.merge(graphdef, s)(images, train=False)[1]["preact_stages"])
  base = preacts(state)
  for i, bn in enumerate(model.bn_before_relu()):
    shift = jnp.asarray(_array(130 + i, bn.bias[...].shape))
    bn.bias[...] = bn.bias[...] + shift
    moved = preacts(nnx.state(model))
    bn.bias[...] = bn.bias[...] - shift
    np.testing.assert_allclose(moved[i + 1] - base[i + 1], np.broadcast_to(shift, base[i + 1].shape),
                               atol=1e-4)


@pytest.mark.parametrize("pair", cifar_common.PAIRS)
def test_extras_of_every_pair(pair):
  """VID regressors (first min(n_s, n_t) stages), OFD connectors and margins (last n),
  from the feature shapes of the pair's models, without running them."""
  teacher_name, student_name = cifar_common.PAIRS[pair]
  student, teacher = _feature_shapes(student_name), _feature_shapes(teacher_name)
  # The teacher's BatchNorms as concrete modules of the real feature counts (margins are
  # NumPy of their values; the values themselves are checked above).
  bns = [layers.batch_norm(bn.num_features, dtype=jnp.float32, rngs=nnx.Rngs(0))
         for bn in _abstract(teacher_name).bn_before_relu()]
  teacher_model = types.SimpleNamespace(bn_before_relu=lambda: bns)
  setup = lambda: _fake_setup(student, teacher, teacher_model, nnx.Rngs(0))
  vid = nnx.eval_shape(lambda: _method(name="vid").extras(setup()))
  count = min(len(student["stages"]), len(teacher["stages"])) - 1
  assert len(vid.stages) == count
  for stage, s, t in zip(vid.stages, student["stages"][1:], teacher["stages"][1:]):
    assert stage.regressor[0].kernel.shape == (1, 1, s.shape[-1], t.shape[-1])
    assert stage.regressor[4].kernel.shape == (1, 1, t.shape[-1], t.shape[-1])
    assert stage.log_scale.shape == (t.shape[-1],)
  ofd = _method(name="ofd")
  connectors = nnx.eval_shape(lambda: ofd.extras(setup())).connectors
  margins = ofd.frozen(setup())["margins"]
  count = min(len(student["preact_stages"]), len(teacher["preact_stages"])) - 1
  assert len(connectors) == len(margins) == count
  for connector, margin, s, t in zip(connectors, margins, student["preact_stages"][-count:],
                                     teacher["preact_stages"][-count:]):
    assert connector.conv.kernel.shape == (1, 1, s.shape[-1], t.shape[-1])
    assert connector.bn.num_features == t.shape[-1] and margin.shape == (t.shape[-1],)
    assert np.all(np.asarray(margin) <= 0)
  # The pair's configs: mdistiller's weights and the section 6 recipe (METHODS.md 6, 9).
  lr = 0.01 if student_name in ("ShuffleV1", "ShuffleV2", "MobileNetV2") else 0.05
  for module, loss in (
      (cifar_vid, "1 CE + 1 sum_stages VID(eps=1e-05)"),
      (cifar_kdsvd, "1 CE + 1 KDSVD(K=1, feats[1:])"),
      (cifar_ofd, "1 CE + 0.001 sum_i partial-L2_i(connector(s_i), t_i, margin_i) / 2^(n-1-i) "
                  "(pre-ReLU stages)")):
    card = dict(recipe.card(module.get_config(pair)))
    assert card["loss"] == loss
    assert card["lr"] == f"{lr:g}, x0.1 at epochs 150, 180, 210"
    assert card["schedule"].startswith("240 epochs x 781 steps of batch 64 ")
    assert card["teacher"].startswith(
        f"{teacher_name} (download_ckpts/cifar_teachers/{teacher_name}_vanilla/ckpt_epoch_240.pth;")
    assert card["student"].startswith(f"{student_name} (")


def test_published_vid_numbers_and_card():
  assert published.lookup("VID", "resnet32x4", "resnet8x4") == 73.09
  assert published.lookup("VID", "wrn_40_2", "ShuffleV1") == 73.61
  card = dict(recipe.card(cifar_vid.get_config("res32x4_res8x4")))
  assert card["published"] == "VID 73.09 (CRD README (RepDistiller), CIFAR-100 tables 1-2)"
  ofd_card = dict(recipe.card(cifar_ofd.get_config("vgg13_vgg8")))
  assert ofd_card["teacher"].endswith("frozen, BatchNorm on batch statistics)")
  assert "published" not in ofd_card


# ---------------------------------------------------------------------------- train step


@pytest.fixture(scope="module")
def dataset():
  return data.load("cifar10", "synthetic", synthetic_train_size=32, synthetic_test_size=16)


@pytest.fixture(scope="module")
def micro():
  """The micro CNNs (tests/micro_cnn.py) in the model registry for this module."""
  with micro_cnn.registered():
    yield


# vid in the default suite, on a two-stage micro CNN teacher and student
# (tests/micro_cnn.py: VID's regressors pair the stages after the first, whatever the
# model), and ofd on it (its teacher runs in train mode inside the step); kdsvd and ofd
# on resnet8 (25-45 s each) in the slow one.
@pytest.mark.parametrize("module,model", [
    pytest.param(cifar_vid, micro_cnn.NAME2, id="vid"),
    pytest.param(cifar_kdsvd, "resnet8", id="kdsvd", marks=pytest.mark.slow),
    pytest.param(cifar_ofd, micro_cnn.NAME2, id="ofd_micro"),
    pytest.param(cifar_ofd, "resnet8", id="ofd", marks=pytest.mark.slow)])
def test_one_train_step_trains_the_extras_but_not_into_the_student(module, model, dataset, micro):
  config = module.get_config("smoke")
  config.teacher.model, config.batch_size = model, 16
  if model != "resnet8":
    config.student.model = model
  mesh = train.data_mesh()
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  student, teacher = train.create_student(config, 10), models.create(model, 10, rngs=nnx.Rngs(7))
  method = methods.create(config.method)
  setup = Setup(student, teacher, feeder, nnx.Rngs(1))
  extras, frozen = method.extras(setup), method.frozen(setup)
  graphdef, initial = nnx.split(train.StudentWithExtras(student, extras))
  initial = jax.tree.map(np.array, initial)  # host copies: the step donates its state
  trainer = train.Trainer(config, feeder, student, teacher, method, mesh, extras, frozen)
  before = jax.device_get(trainer.state.params)
  batch = next(feeder.train_batches(0))
  state, metrics = trainer.train_step(trainer.state, None, trainer.frozen, batch)
  trainer.state = state
  assert np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.params)
  changed = lambda a, b: any(not np.array_equal(x, y) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(before["student"], after["student"])
  if extras is None:
    assert "extras" not in after or not jax.tree.leaves(after["extras"])
  else:
    assert changed(before["extras"], after["extras"])
    if module is cifar_vid:  # the learned variance moved too
      assert changed(before["extras"]["stages"][0]["log_scale"],
                     after["extras"]["stages"][0]["log_scale"])
  saved = nnx.state(trainer.student())  # what final_student holds: the student alone
  assert jax.tree.structure(saved) == jax.tree.structure(initial["student"])
  if module is cifar_ofd:  # the step ran the teacher on batch statistics
    views = jax.jit(lambda b: feeder.train_inputs(b, jnp.int32(0), method)[0])(batch)
    view = augment.normalize(views[0], jnp.asarray(feeder.info.mean), jnp.asarray(feeder.info.std))
    labels = jax.jit(lambda b: feeder.train_inputs(b, jnp.int32(0), method)[1])(batch)

    def ofd_term(teacher_train):
      model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, initial))
      s_out = ModelOutput(*model.student(view, train=True))
      t_out = ModelOutput(*teacher(view, train=teacher_train))
      return float(method.loss(s_out, t_out, labels, 0, Aux(model.extras, frozen))[1]["ofd"])

    with_batch_statistics, with_running_averages = ofd_term(True), ofd_term(False)
    assert float(metrics["ofd"]) == pytest.approx(with_batch_statistics, rel=1e-4)
    assert abs(with_running_averages - with_batch_statistics) > 1e-3 * with_batch_statistics


# ------------------------------------------------------------------------------ main.py


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar_vid.py:smoke", "cifar_kdsvd.py:smoke",
                                    "cifar_ofd.py:smoke"])
def test_smoke_config_runs_from_main(tmp_path, config):
  result = subprocess.run([sys.executable, "main.py", f"--config=configs/{config}",
                           f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2
