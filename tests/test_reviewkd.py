"""ReviewKD (METHODS.md 9): HCL against NumPy; the layout derived from the models against
mdistiller's yamls and the ReviewKD authors' per-model tables; the total and its gradients
(connectors included) against a PyTorch transcription of mdistiller's forward_train;
extras for every pair; one train step; the config, its recipe card and the smoke run."""
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

from configs import cifar_common, cifar_reviewkd
from kd_jax import data, losses, methods, models, train
from kd_jax.data import feeders
from kd_jax.methods import Aux, ModelOutput, Setup
from kd_jax.methods import reviewkd as reviewkd_lib
from kd_jax.metrics import read_metrics
from kd_jax.tools import recipe
from tests import loss_reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)


def _array(shape, scale=1.0):
  return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


def _method(**fields):
  return methods.create(ml_collections.ConfigDict(methods.defaults("reviewkd", **fields)))


def _materialize(build, seed=0):
  """`build()` (a module) with NumPy-drawn values: kernels N(0, 2/fan_in), biases
  N(0, 0.01), BatchNorm scales and variances 1, means 0. JAX's eager initialisers compile
  once per shape (~10 CPU-s for a resnet8 on 2 cores), which these tests do not need."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  values = []
  for path, variable in nnx.to_flat_state(state):
    shape, name = variable.shape, path[-1]
    if name == "kernel":
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ("scale", "var"):
      value = np.ones(shape)
    elif name == "bias":
      value = rng.normal(size=shape) * 0.1
    else:
      value = np.zeros(shape)
    values.append((path, variable.replace(jnp.asarray(value, variable.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(values))


# ------------------------------------------------------------------------------ HCL

HCL_SHAPES = [(3, 8, 8, 5), (3, 4, 4, 3), (3, 3, 3, 2), (3, 2, 2, 4), (3, 1, 1, 6)]


def test_hcl_matches_the_numpy_reference():
  """Sizes 8 (pyramid 4, 2, 1), 4 (2, 1), 3 (2 with overlapping bins, 1), 2 (1), 1 (none)."""
  student = [_array(shape) for shape in HCL_SHAPES]
  teacher = [_array(shape, 2.0) for shape in HCL_SHAPES]
  value = jax.jit(losses.hcl)(student, teacher)
  np.testing.assert_allclose(value, ref.hcl(student, teacher), rtol=1e-5)


def test_hcl_properties():
  maps = [_array(shape) for shape in HCL_SHAPES[:2]]
  other = [_array(shape) for shape in HCL_SHAPES[:2]]
  value_and_grad = jax.jit(jax.value_and_grad(losses.hcl, argnums=(0, 1)))
  assert float(value_and_grad(maps, maps)[0]) == 0.0
  _, grads = value_and_grad(maps, other)
  assert all(float(jnp.abs(g).max()) > 0 for g in grads[0])
  assert all(float(jnp.abs(g).max()) == 0 for g in grads[1])  # no gradient into the teacher
  low = jax.jit(losses.hcl)([m.astype(jnp.bfloat16) for m in maps], other)
  assert low.dtype == jnp.float32 and np.isfinite(float(low))
  with pytest.raises(ValueError, match="same shape"):
    losses.hcl([maps[0]], [maps[1]])
  with pytest.raises(ValueError, match="levels"):
    losses.hcl(maps, other[:1])


# ------------------------------------------------------------------------------ layout

FEEDER_32 = types.SimpleNamespace(info=types.SimpleNamespace(image_size=32))
FEEDER_224 = types.SimpleNamespace(info=types.SimpleNamespace(image_size=224))


@functools.lru_cache(maxsize=None)
def _feature_shapes(model_name, num_classes=100):
  """Abstract model + abstract forward: nothing is initialised or run."""
  model = nnx.eval_shape(lambda: models.create(model_name, num_classes, rngs=nnx.Rngs(0)))
  feeder = FEEDER_224 if model_name.startswith("imagenet_") else FEEDER_32
  return Setup(model, None, feeder, nnx.Rngs(0)).feature_shapes(model)


def _layout(teacher, student, preact=False):
  num_classes = 1000 if student.startswith("imagenet_") else 100
  return reviewkd_lib.review_layout(_feature_shapes(student, num_classes),
                                    _feature_shapes(teacher, num_classes), preact)


# Typed by hand from mdistiller (a08d46f): configs/cifar100/reviewkd.yaml sets only the
# weight, so its values are mdistiller/engine/cfg.py's CFG.REVIEWKD defaults; the two
# ImageNet yamls set them all (STU_PREACT True). (in, out, shapes, out_shapes, preact).
MDISTILLER_YAMLS = {
    ("resnet32x4", "resnet8x4"): ((64, 128, 256, 256), (64, 128, 256, 256), (1, 8, 16, 32),
                                  (1, 8, 16, 32), False),
    ("imagenet_resnet34", "imagenet_resnet18"): (
        (64, 128, 256, 512, 512), (64, 128, 256, 512, 512), (1, 7, 14, 28, 56),
        (1, 7, 14, 28, 56), True),
    ("imagenet_resnet50", "imagenet_mobilenetv1"): (
        (128, 256, 512, 1024, 1024), (256, 512, 1024, 2048, 2048), (1, 7, 14, 28, 56),
        (1, 7, 14, 28, 56), True),
}
# Typed by hand from the authors' build_review_kd (dvlab-research/ReviewKD
# CIFAR-100/model/reviewkd.py; out_shapes None there means = shapes; its resnet entry
# lists a fifth shape that its zip never reads).
AUTHORS = {
    "res56_res20": ((16, 32, 64, 64), (16, 32, 64, 64), (1, 8, 16, 32), (1, 8, 16, 32)),
    "res110_res32": ((16, 32, 64, 64), (16, 32, 64, 64), (1, 8, 16, 32), (1, 8, 16, 32)),
    "res32x4_res8x4": ((64, 128, 256, 256), (64, 128, 256, 256), (1, 8, 16, 32), (1, 8, 16, 32)),
    "wrn40_2_wrn16_2": ((32, 64, 128, 128), (32, 64, 128, 128), (1, 8, 16, 32), (1, 8, 16, 32)),
    "wrn40_2_wrn40_1": ((16, 32, 64, 64), (32, 64, 128, 128), (1, 8, 16, 32), (1, 8, 16, 32)),
    "vgg13_vgg8": ((128, 256, 512, 512, 512), (128, 256, 512, 512, 512), (1, 4, 4, 8, 16),
                   (1, 4, 4, 8, 16)),
    "res32x4_shuv1": ((240, 480, 960, 960), (64, 128, 256, 256), (1, 4, 8, 16), (1, 8, 16, 32)),
    "wrn40_2_shuv1": ((240, 480, 960, 960), (32, 64, 128, 128), (1, 4, 8, 16), (1, 8, 16, 32)),
    "res32x4_shuv2": ((116, 232, 464, 1024), (64, 128, 256, 256), (1, 4, 8, 16), (1, 8, 16, 32)),
    "vgg13_mv2": ((12, 16, 48, 160, 1280), (128, 256, 512, 512, 512), (1, 2, 4, 8, 16),
                  (1, 4, 4, 8, 16)),
    "res50_mbv2": ((12, 16, 48, 160, 1280), (256, 512, 1024, 2048, 2048), (1, 2, 4, 8, 16),
                   (1, 4, 8, 16, 32)),
}


@pytest.mark.parametrize("pair", list(MDISTILLER_YAMLS), ids="_".join)
def test_layout_equals_mdistillers_yaml(pair):
  *expected, preact = MDISTILLER_YAMLS[pair]
  assert tuple(_layout(*pair, preact)) == tuple(expected)


@pytest.mark.slow  # every CIFAR model's shapes: ~15 s on an idle 2-core machine
def test_layout_equals_the_authors_tables():
  for pair, expected in AUTHORS.items():
    assert tuple(_layout(*cifar_common.PAIRS[pair])) == expected, pair


# By default two pairs: the one mdistiller ships and one with more student levels than
# teacher levels and every map upsampled; all 16 in the slow run.
FAST_PAIRS = ("res32x4_res8x4", "wrn40_2_mv2")


@pytest.mark.parametrize("pair", [pair if pair in FAST_PAIRS else pytest.param(
    pair, marks=pytest.mark.slow) for pair in cifar_common.PAIRS])
def test_extras_fit_every_pair(pair):
  """Abstract connectors: ABF widths as the layout says, and the loss traced on abstract
  features gives a scalar (hcl raises on any shape mismatch)."""
  method = _method()
  teacher, student = cifar_common.PAIRS[pair]
  student_shapes, teacher_shapes = _feature_shapes(student), _feature_shapes(teacher)
  layout = reviewkd_lib.review_layout(student_shapes, teacher_shapes)
  connectors = nnx.eval_shape(lambda: reviewkd_lib.ReviewConnectors(layout, 512, nnx.Rngs(0)))
  mid = min(512, models.pooled_dim(student))
  assert layout.in_channels[-1] == models.pooled_dim(student), pair
  assert layout.out_channels[-1] == models.pooled_dim(teacher), pair
  shallow_first = list(connectors.abfs)[::-1]
  assert len(shallow_first) == len(layout.in_channels) == len(layout.out_channels)
  for abf, c_in, c_out in zip(shallow_first, layout.in_channels, layout.out_channels):
    assert abf.conv1.kernel.shape == (1, 1, c_in, mid), pair
    assert abf.conv2.kernel.shape == (3, 3, mid, c_out), pair
  assert connectors.abfs[0].att_conv is None  # the deepest level fuses nothing
  assert all(abf.att_conv.kernel.shape == (1, 1, 2 * mid, 2) for abf in shallow_first[:-1])
  graphdef, state = nnx.split(connectors)

  def loss(state, student_features, teacher_features):
    student_out = ModelOutput(jnp.zeros((2, 100)), student_features)
    teacher_out = ModelOutput(jnp.zeros((2, 100)), teacher_features)
    return method.loss(student_out, teacher_out, jnp.zeros(2, jnp.int32), 0,
                       Aux(nnx.merge(graphdef, state)))

  total, terms = jax.eval_shape(loss, state, student_shapes, teacher_shapes)
  assert total.shape == () and terms["reviewkd"].shape == (), pair


def test_extras_come_from_the_setup():
  """method.extras reads the models through Setup.feature_shapes (pre-ReLU on request)."""
  student, teacher = (nnx.eval_shape(lambda n=n: models.create(n, 100, rngs=nnx.Rngs(0)))
                      for n in ("resnet8x4", "resnet32x4"))
  for preact in (False, True):
    extras = nnx.eval_shape(lambda: _method(student_preact=preact).extras(
        Setup(student, teacher, FEEDER_32, nnx.Rngs(0))))
    assert (extras.in_channels, extras.out_channels, extras.shapes, extras.out_shapes) == (
        MDISTILLER_YAMLS[("resnet32x4", "resnet8x4")][:4])


def test_nearest_resize_is_pytorchs():
  torch = pytest.importorskip("torch")
  x = np.asarray(_array((2, 5, 3, 4)))
  for size in ((10, 6), (2, 2), (7, 5), (3, 3), (5, 3)):
    expected = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size,
                                               mode="nearest").permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(reviewkd_lib.resize_nearest(jnp.asarray(x), size), expected)


# ------------------------------------------------------------- the total, against PyTorch

B, C = 4, 7
# A student with more levels than the teacher (its stem and first stage go unused), maps
# smaller than the teacher's (every ABF output is upsampled) and a residual that is
# downsampled on its way (8x8 -> 4x4): every branch of mdistiller's forward_train.
STUDENT_STAGES = [(B, 8, 8, 3), (B, 8, 8, 4), (B, 4, 4, 6), (B, 2, 2, 8)]
STUDENT_POOLED = 10
TEACHER_STAGES = [(B, 16, 16, 2), (B, 16, 16, 5), (B, 8, 8, 7)]
TEACHER_POOLED = 9
# The per-pair settings mdistiller would need for these maps, typed by hand.
IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES = (6, 8, 10), (5, 7, 9), (1, 2, 4), (1, 8, 16)


def _features(stage_shapes, pooled, scale):
  return {"stages": tuple(jnp.abs(_array(s, scale)) for s in stage_shapes),
          "preact_stages": tuple(_array(s, scale) for s in stage_shapes),
          "pooled": jnp.abs(_array((B, pooled), scale))}


STUDENT = ModelOutput(_array((B, C), 2.0), _features(STUDENT_STAGES, STUDENT_POOLED, 1.0))
TEACHER = ModelOutput(_array((B, C), 2.0), _features(TEACHER_STAGES, TEACHER_POOLED, 1.5))
LABELS = jnp.asarray(RNG.integers(0, C, B))


def _torch_total(torch, connectors, student_features, weight, epoch_from_one, preact):
  """mdistiller ReviewKD.forward_train + hcl_loss, written out in PyTorch on NCHW copies
  of the inputs, with the connectors' parameters copied from kd_jax (kernels HWIO -> OIHW)."""
  F = torch.nn.functional

  def t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)

  def nchw(x):
    return x.permute(0, 3, 1, 2)

  def conv(layer):
    return t(layer.kernel[...]).permute(3, 2, 0, 1).requires_grad_()

  abfs = []  # deepest first, as connectors.abfs
  for abf in connectors.abfs:
    abfs.append({
        "w1": conv(abf.conv1), "g1": t(abf.bn1.scale[...]), "b1": t(abf.bn1.bias[...]),
        "w2": conv(abf.conv2), "g2": t(abf.bn2.scale[...]), "b2": t(abf.bn2.bias[...]),
        "wa": None if abf.att_conv is None else conv(abf.att_conv),
        "ba": None if abf.att_conv is None else t(abf.att_conv.bias[...])})

  def run_abf(p, x, y=None, shape=None, out_shape=None):
    n, _, h, w = x.shape
    x = F.batch_norm(F.conv2d(x, p["w1"]), None, None, p["g1"], p["b1"], training=True,
                     eps=1e-5)
    if p["wa"] is not None:
      y = F.interpolate(y, (shape, shape), mode="nearest")
      z = torch.sigmoid(F.conv2d(torch.cat([x, y], dim=1), p["wa"], p["ba"]))
      x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
      x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    return F.batch_norm(F.conv2d(x, p["w2"], padding=1), None, None, p["g2"], p["b2"],
                        training=True, eps=1e-5), x

  stages = [nchw(t(f)).requires_grad_() for f in student_features["preact_stages" if preact
                                                                   else "stages"]]
  pooled = t(student_features["pooled"]).requires_grad_()
  x = (stages + [pooled.unsqueeze(-1).unsqueeze(-1)])[::-1]
  results = []
  out, residual = run_abf(abfs[0], x[0], out_shape=OUT_SHAPES[0])
  results.append(out)
  for features, abf, shape, out_shape in zip(x[1:], abfs[1:], SHAPES[1:], OUT_SHAPES[1:]):
    out, residual = run_abf(abf, features, residual, shape, out_shape)
    results.insert(0, out)
  teacher = ([nchw(t(f)) for f in TEACHER.features["preact_stages"][1:]]
             + [t(TEACHER.features["pooled"]).unsqueeze(-1).unsqueeze(-1)])
  hcl = 0.0
  for fs, ft in zip(results, teacher):
    level, cnt, tot = F.mse_loss(fs, ft), 1.0, 1.0
    for size in (4, 2, 1):
      if size >= fs.shape[2]:
        continue
      cnt /= 2.0
      level = level + cnt * F.mse_loss(F.adaptive_avg_pool2d(fs, size),
                                       F.adaptive_avg_pool2d(ft, size))
      tot += cnt
    hcl = hcl + level / tot
  total = (F.cross_entropy(t(STUDENT.logits), torch.tensor(np.asarray(LABELS), dtype=torch.long))
           + weight * min(epoch_from_one / 20, 1.0) * hcl)
  total.backward()
  grads = {"stages": [np.zeros(s.permute(0, 2, 3, 1).shape) if s.grad is None  # unused levels
                      else s.grad.permute(0, 2, 3, 1).numpy() for s in stages],
           "pooled": pooled.grad.numpy(),
           "kernels": [(p["w1"].grad.permute(2, 3, 1, 0).numpy(),
                        p["w2"].grad.permute(2, 3, 1, 0).numpy()) for p in abfs]}
  return float(total.detach()), grads


@pytest.mark.parametrize("preact,epochs", [
    (False, (0, 30)), pytest.param(True, (4,), marks=pytest.mark.slow)])
def test_total_and_gradients_equal_mdistillers_forward(preact, epochs):
  """Epochs count from 0 here, from 1 in mdistiller: epoch 0 gets 1/20 of the weight."""
  torch = pytest.importorskip("torch")
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        (STUDENT.features, TEACHER.features))
  layout = reviewkd_lib.review_layout(*shapes, student_preact=preact)
  assert tuple(layout) == (IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES)
  connectors = _materialize(lambda: reviewkd_lib.ReviewConnectors(layout, 512, nnx.Rngs(3)))
  method = _method(reviewkd_weight=5.0, student_preact=preact)

  @nnx.jit
  def value_and_grads(features, connectors, epoch):
    def total(features, connectors):
      student = ModelOutput(STUDENT.logits, features)
      return method.loss(student, TEACHER, LABELS, epoch, Aux(connectors))[0]
    return nnx.value_and_grad(total, argnums=(0, 1))(features, connectors)

  def close(got, want):  # float32 here, float64 there: atol relative to the largest entry
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())

  key = "preact_stages" if preact else "stages"
  for epoch in epochs:
    value, (feature_grads, param_grads) = value_and_grads(STUDENT.features, connectors,
                                                          jnp.asarray(epoch))
    expected, torch_grads = _torch_total(torch, connectors, STUDENT.features, 5.0, epoch + 1,
                                         preact)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    for got, want in zip(feature_grads[key], torch_grads["stages"]):
      if np.any(want):  # the unused shallow levels get no gradient on either side
        close(got, want)
      else:
        assert not np.any(got)
    close(feature_grads["pooled"], torch_grads["pooled"])
    assert not any(np.any(g) for g in feature_grads["stages" if preact else "preact_stages"])
    for index, (w1, w2) in enumerate(torch_grads["kernels"]):
      close(param_grads["abfs"][index]["conv1"]["kernel"][...], w1)
      close(param_grads["abfs"][index]["conv2"]["kernel"][...], w2)


def test_total_is_ce_plus_warmed_up_hcl_of_a_cloned_connector():
  """The loss assembled by hand from kd_jax.losses, with a clone of the connectors."""
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        (STUDENT.features, TEACHER.features))
  connectors = _materialize(lambda: reviewkd_lib.ReviewConnectors(
      reviewkd_lib.review_layout(*shapes), 512, nnx.Rngs(0)))
  clone = nnx.clone(connectors)
  method = _method(reviewkd_weight=5.0, ce_weight=0.5)

  @nnx.jit
  def run(connectors, clone):
    total, terms = method.loss(STUDENT, TEACHER, LABELS, jnp.asarray(9), Aux(connectors))
    stages = STUDENT.features["stages"]  # the deepest three levels: stages 2, 3 and pooled
    fused = clone([stages[2], stages[3], STUDENT.features["pooled"][:, None, None, :]])
    return total, terms, fused

  total, terms, fused = run(connectors, clone)
  teacher = [*TEACHER.features["preact_stages"][1:], TEACHER.features["pooled"][:, None, None, :]]
  hcl = ref.hcl(fused, teacher)
  ce = float(methods.cross_entropy(STUDENT.logits, LABELS))
  assert float(terms["reviewkd"]) == pytest.approx(10 / 20 * 5.0 * hcl, rel=1e-5)
  assert float(total) == pytest.approx(0.5 * ce + 10 / 20 * 5.0 * hcl, rel=1e-5)
  # BatchNorm ran in training mode: the running statistics moved, alike in both copies.
  assert not np.allclose(connectors.abfs[-1].bn1.mean[...], 0.0)
  np.testing.assert_allclose(connectors.abfs[-1].bn1.mean[...], clone.abfs[-1].bn1.mean[...],
                             rtol=1e-6)


def test_fields_and_formula():
  method = _method()
  assert (method.ce_weight, method.reviewkd_weight, method.warmup_epochs, method.student_preact,
          method.max_mid_channel) == (1.0, 1.0, 20, False, 512)  # mdistiller CFG.REVIEWKD
  assert method.formula() == ("1 CE + min(1, (e+1)/20) 1 HCL(ABF(student stages + pooled), "
                              "teacher pre-ReLU stages + pooled)")
  assert "256 channels" in method.describe_extras(256, 256)["connectors"]
  assert "512 channels" in method.describe_extras(1280, 2048)["connectors"]
  with pytest.raises(Exception, match="warmup_epochs"):
    _method(warmup_epochs=0)


# ------------------------------------------------------------------ train step, config

@pytest.mark.slow  # ~30 s; FitNet's and VID's one-step tests cover the trainer path
def test_one_train_step_trains_the_connectors_but_not_into_the_student():
  dataset = data.load("cifar10", "synthetic", synthetic_train_size=32, synthetic_test_size=16)
  config = cifar_reviewkd.get_config("smoke")
  config.batch_size, config.data.synthetic_train_size = 16, 32
  mesh = train.data_mesh(jax.devices()[:1])  # one device: 8 simulated ones compile slowly
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  student = _materialize(lambda: models.create("resnet8", 10, rngs=nnx.Rngs(0)), seed=0)
  teacher = _materialize(lambda: models.create("resnet8", 10, rngs=nnx.Rngs(0)), seed=1)
  method = methods.create(config.method)
  extras = _materialize(lambda: method.extras(Setup(student, teacher, feeder, nnx.Rngs(2))))
  assert extras.in_channels == (16, 32, 64, 64) and extras.out_shapes == (1, 8, 16, 32)
  before = jax.tree.map(np.asarray, nnx.state(extras, nnx.Param))
  trainer = train.Trainer(config, feeder, student, teacher, method, mesh, extras)
  state, metrics = trainer.train_step(trainer.state, None, trainer.frozen,
                                      next(feeder.train_batches(0)))
  trainer.state = state
  assert np.isfinite(float(metrics["loss"])) and float(metrics["reviewkd"]) > 0
  after = jax.device_get(state.params["extras"])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
  assert all(changed)  # every connector parameter got a gradient
  trained = trainer.student()
  assert isinstance(trained, type(student))
  assert jax.tree.structure(nnx.state(trained)) == jax.tree.structure(nnx.state(student))
  assert not any(isinstance(node, reviewkd_lib.ABF) for _, node in nnx.iter_graph(trained))


# The authors' CIFAR-100/script/reviewKD.sh (--kd-loss-weight), typed by hand; its
# resnet32x4 -> resnet8x4 weight is also mdistiller's configs/cifar100/reviewkd.yaml.
AUTHORS_WEIGHTS = {"res56_res20": 0.6, "res110_res32": 1.0, "res32x4_res8x4": 5.0,
                   "wrn40_2_wrn16_2": 5.0, "wrn40_2_wrn40_1": 5.0, "wrn40_2_shuv1": 5.0,
                   "res32x4_shuv1": 5.0, "res32x4_shuv2": 8.0}


@pytest.mark.parametrize("pair", list(cifar_common.PAIRS))
def test_config_recipe_card(pair):
  teacher, student = cifar_common.PAIRS[pair]
  config = cifar_reviewkd.get_config(pair)
  card = dict(recipe.card(config))
  weight = AUTHORS_WEIGHTS.get(pair, 1.0)
  assert card["loss"] == (f"1 CE + min(1, (e+1)/20) {weight:g} HCL(ABF(student stages + pooled), "
                          "teacher pre-ReLU stages + pooled) (e: epoch counted from 0)")
  lr = 0.01 if student in ("ShuffleV1", "ShuffleV2", "MobileNetV2") else 0.05
  assert card["lr"] == f"{lr:g}, x0.1 at epochs 150, 180, 210"
  assert card["schedule"].startswith("240 epochs x 781 steps of batch 64 ")
  assert card["optimizer"] == "SGD momentum 0.9, weight decay 0.0005 on all parameters"
  assert card["teacher"].startswith(f"{teacher} (download_ckpts/cifar_teachers/{teacher}_vanilla")
  assert "not saved with it" in card["connectors"]
  published = {"res56_res20": 71.89, "wrn40_2_wrn40_1": 75.09, "res32x4_res8x4": 75.63,
               "res50_mbv2": 69.89, "res32x4_shuv1": 77.45, "res32x4_shuv2": 77.78}
  if pair in published:
    assert card["published"] == (f"ReviewKD {published[pair]:.2f} "
                                 "(ND authors' README (ReviewKD row))")
  else:
    assert "published" not in card


@pytest.mark.slow
def test_smoke_config_runs_from_main(tmp_path):
  result = subprocess.run([sys.executable, "main.py", "--config=configs/cifar_reviewkd.py:smoke",
                           f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2
  assert "reviewkd" in read_metrics(str(tmp_path), "train")[0]
