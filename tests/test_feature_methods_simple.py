"""FitNet, AT, NST, SP, PKT and RKD (METHODS.md 9): totals against the formula assembled
by hand from the NCHW NumPy references, mdistiller's weights in the configs, FitNet's
regressor against PyTorch layers and built for every pair, one real train step, main.py."""
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

from configs import (cifar_at, cifar_common, cifar_fitnet, cifar_nst, cifar_pkt, cifar_rkd,
                     cifar_sp)
from kd_jax import data, methods, models, train
from kd_jax.data import feeders
from kd_jax.errors import UserError
from kd_jax.methods import Aux, ModelOutput, Setup
from kd_jax.methods import fitnet as fitnet_lib
from kd_jax.metrics import read_metrics
from kd_jax.tools import published, recipe
from tests import loss_reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, C = 4, 5
RNG = np.random.default_rng(0)
LABELS = jnp.asarray(RNG.integers(0, C, B))


def _maps(shapes, scale=1.0):
  """Non-negative NHWC maps (the stages are taken after a ReLU)."""
  return tuple(jnp.asarray(np.abs(RNG.normal(size=(B, *shape))) * scale, jnp.float32)
               for shape in shapes)


def _output(stage_shapes, pooled_dim):
  stages = _maps(stage_shapes)
  return ModelOutput(jnp.asarray(RNG.normal(size=(B, C)) * 2, jnp.float32),
                     {"pooled": _maps([(pooled_dim,)])[0], "stages": stages,
                      "preact_stages": stages})


# The student has 4 stages, the teacher 5 (as resnet -> ResNet50): zip pairs stages 1..3
# and leaves the teacher's last unused. Student stage 1 is smaller than the teacher's and
# stage 3 larger, so both pooling directions show.
STUDENT = _output([(8, 8, 2), (4, 4, 3), (4, 4, 4), (4, 4, 3)], 6)
TEACHER = _output([(8, 8, 3), (8, 8, 4), (4, 4, 5), (2, 2, 6), (2, 2, 7)], 9)
# mdistiller's engine/cfg.py (CE_WEIGHT, FEAT_WEIGHT and method settings) per method.
MDISTILLER = {
    "fitnet": dict(ce_weight=1.0, feat_weight=100.0, hint_layer=2),
    "at": dict(ce_weight=1.0, feat_weight=1000.0, p=2.0),
    "nst": dict(ce_weight=1.0, feat_weight=50.0),
    "sp": dict(ce_weight=1.0, feat_weight=3000.0),
    "pkt": dict(ce_weight=1.0, feat_weight=30000.0),
    "rkd": dict(ce_weight=1.0, feat_weight=1.0, distance_weight=25.0, angle_weight=50.0),
}
CONFIGS = {"fitnet": cifar_fitnet, "at": cifar_at, "nst": cifar_nst, "sp": cifar_sp,
           "pkt": cifar_pkt, "rkd": cifar_rkd}


def _ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), np.asarray(labels)])


def _method(name, **fields):
  return methods.create(ml_collections.ConfigDict(dict(name=name, **fields)))


def _stages(output, first=1):
  return [np.asarray(x) for x in output.features["stages"][first:]]


# name -> the feature term by hand from tests/loss_reference.py (NCHW, float64).
EXPECTED_TERMS = {
    "at": lambda s, t, m: m.feat_weight * sum(
        ref.at(a, b, m.p) for a, b in zip(_stages(s), _stages(t))),
    "nst": lambda s, t, m: m.feat_weight * sum(
        ref.nst(a, b) for a, b in zip(_stages(s), _stages(t))),
    "sp": lambda s, t, m: m.feat_weight * ref.sp(_stages(s)[-1], _stages(t)[-1]),
    "pkt": lambda s, t, m: m.feat_weight * ref.pkt(s.features["pooled"], t.features["pooled"]),
    "rkd": lambda s, t, m: m.feat_weight * ref.rkd(s.features["pooled"], t.features["pooled"],
                                                   m.distance_weight, m.angle_weight),
}


@pytest.mark.parametrize("name,fields", [
    ("at", {}), ("at", dict(ce_weight=0.5, feat_weight=10.0, p=3.0)),
    ("nst", {}), ("nst", dict(ce_weight=0.5, feat_weight=7.0)),
    ("sp", {}), ("pkt", {}), ("rkd", {}), ("rkd", dict(distance_weight=2.0, angle_weight=3.0))])
def test_total_is_the_formula_by_hand(name, fields):
  method = _method(name, **fields)
  total, metrics = method.loss(STUDENT, TEACHER, LABELS, jnp.asarray(0), Aux())
  ce = method.ce_weight * _ce(STUDENT.logits, LABELS)
  term = EXPECTED_TERMS[name](STUDENT, TEACHER, method)
  # PKT's KL of float32 similarity distributions lands 1.35e-5 from the float64 value
  # on some CPUs (XLA's reduction order); the others stay within 1e-5.
  rel = 3e-5 if name == "pkt" else 1e-5
  assert float(total) == pytest.approx(ce + term, rel=rel)
  assert float(metrics[name]) == pytest.approx(term, rel=rel)
  assert float(metrics["ce"]) == pytest.approx(ce, rel=1e-5)
  assert set(metrics) == {"ce", name}


def _batch_norm_train(x, scale, bias, eps=1e-5):
  """BatchNorm2d in train mode on NHWC: biased batch statistics per channel."""
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("teacher_size,kind", [(4, "conv"), (8, "transposed"), (2, "conv")])
def test_fitnet_total_is_the_formula_by_hand(teacher_size, kind):
  """CE + 100 mean((ReLU(BN_train(conv(s_2))) - t_2)^2), on `feats` (not pre-ReLU)."""
  student = STUDENT  # hint: stage 2, 4x4x4
  teacher_stages = list(TEACHER.features["stages"])
  teacher_stages[2] = _maps([(teacher_size, teacher_size, 5)])[0]
  teacher = ModelOutput(TEACHER.logits, dict(TEACHER.features, stages=tuple(teacher_stages),
                                             preact_stages=None))
  method = _method("fitnet")
  regressor = fitnet_lib.ConvReg(student.features["stages"][2].shape, teacher_stages[2].shape,
                                 nnx.Rngs(3))
  assert regressor.kind == kind
  conv = nnx.clone(regressor.conv)
  scale, bias = np.asarray(regressor.bn.scale[...]), np.asarray(regressor.bn.bias[...])
  running_mean = np.asarray(regressor.bn.mean[...])
  total, metrics = method.loss(student, teacher, LABELS, jnp.asarray(0), Aux(regressor))
  hint = np.maximum(_batch_norm_train(np.asarray(conv(student.features["stages"][2]), np.float64),
                                      scale, bias), 0.0)
  assert hint.shape == teacher_stages[2].shape
  term = 100.0 * np.mean((hint - np.asarray(teacher_stages[2])) ** 2)
  assert float(metrics["fitnet"]) == pytest.approx(term, rel=1e-5)
  assert float(total) == pytest.approx(_ce(student.logits, LABELS) + term, rel=1e-5)
  # The BatchNorm ran in train mode: its running mean moved, in place, in the extras.
  assert not np.allclose(np.asarray(regressor.bn.mean[...]), running_mean)


@pytest.mark.parametrize("name", list(MDISTILLER))
def test_no_gradient_into_the_teacher_and_float32_from_bfloat16(name):
  method = _method(name)
  extras = (fitnet_lib.ConvReg(STUDENT.features["stages"][2].shape,
                               TEACHER.features["stages"][2].shape, nnx.Rngs(0))
            if name == "fitnet" else None)
  loss = lambda teacher: method.loss(STUDENT, teacher, LABELS, 0, Aux(nnx.clone(extras)
                                                                         if extras else None))[0]
  grads = jax.grad(loss)(TEACHER)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
  half = lambda output: jax.tree.map(lambda x: x.astype(jnp.bfloat16), output)
  low, _ = method.loss(half(STUDENT), half(TEACHER), LABELS, 0,
                       Aux(nnx.clone(extras) if extras else None))
  assert low.dtype == jnp.float32 and np.isfinite(float(low))
  assert float(low) == pytest.approx(float(loss(TEACHER)), rel=0.05)


@pytest.mark.parametrize("name", list(MDISTILLER))
def test_configs_carry_mdistillers_weights_for_every_pair(name):
  for arg in (*cifar_common.PAIRS, "smoke"):
    config = CONFIGS[name].get_config(arg)
    assert config.method.name == name and config.num_epochs == (2 if arg == "smoke" else 240)
    assert {key: config.method[key] for key in MDISTILLER[name]} == MDISTILLER[name], arg
    assert config.optim.weight_decay == 5e-4 and config.batch_size == 64
  assert methods.create(CONFIGS[name].get_config("res32x4_res8x4").method).formula()


# The recipe card's loss line, written from METHODS.md 9 / mdistiller's cfg.py.
CARD_LOSS = {
    "fitnet": "1 CE + 100 MSE(ConvReg(student stage 2), teacher stage 2)",
    "at": "1 CE + 1000 sum over stages[1:] AT(p=2)",
    "nst": "1 CE + 50 sum over stages[1:] NST",
    "sp": "1 CE + 3000 SP(last stage)",
    "pkt": "1 CE + 30000 PKT(pooled)",
    "rkd": "1 CE + 1 RKD(pooled; distance 25, angle 50)",
}
# A few cells of the CRD README's CIFAR-100 tables (RepDistiller), read by hand.
CRD_README = {("fitnet", "res32x4_shuv1"): 73.59, ("at", "vgg13_mv2"): 59.40,
              ("nst", "wrn40_2_shuv1"): 74.89, ("sp", "res110_res20"): 70.04,
              ("pkt", "res32x4_res8x4"): 73.64, ("rkd", "wrn40_2_wrn16_2"): 73.35}


@pytest.mark.parametrize("name", list(MDISTILLER))
def test_recipe_cards(name):
  for pair, (teacher, student) in cifar_common.PAIRS.items():
    card = dict(recipe.card(CONFIGS[name].get_config(pair)))
    assert card["loss"] == CARD_LOSS[name], pair
    lr = 0.01 if student in ("ShuffleV1", "ShuffleV2", "MobileNetV2") else 0.05
    assert card["lr"] == f"{lr:g}, x0.1 at epochs 150, 180, 210"
    assert card["schedule"].startswith("240 epochs x 781 steps of batch 64 ")
    assert ("regressor" in card) == (name == "fitnet")
    if (name, pair) in CRD_README:
      assert card["published"] == (f"{published.NAMED[name]} {CRD_README[name, pair]:.2f} "
                                   "(CRD README (RepDistiller), CIFAR-100 tables 1-2)")
    if pair in ("res32x4_wrn16_2", "res32x4_wrn40_2", "wrn40_2_res8x4", "wrn40_2_mv2"):
      assert "published" not in card, pair  # pairs the CRD tables lack


def test_regressor_is_mdistillers_conv_reg_in_pytorch():
  """conv / transposed conv / (1+dH)x(1+dW) conv + BatchNorm2d (train) + ReLU, computed by
  PyTorch layers with the same weights; initial weights within PyTorch's default bounds."""
  torch = pytest.importorskip("torch")
  for student_shape, teacher_shape, kind in [
      ((2, 8, 8, 5), (2, 16, 16, 7), "transposed"), ((2, 16, 16, 5), (2, 8, 8, 7), "conv"),
      ((2, 10, 9, 5), (2, 8, 8, 7), "conv")]:
    regressor = fitnet_lib.ConvReg(student_shape, teacher_shape, nnx.Rngs(0))
    assert regressor.kind == kind
    (_, s_h, s_w, s_c), (_, t_h, t_w, t_c) = student_shape, teacher_shape
    kernel = np.asarray(regressor.conv.kernel[...])
    if kind == "transposed":
      conv = torch.nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
      fan_in = t_c * 16  # PyTorch counts weight.size(1) = out channels for the transpose
    elif s_h == 2 * t_h:
      conv = torch.nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
      fan_in = s_c * 9
    else:
      conv = torch.nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
      fan_in = s_c * (1 + s_h - t_h) * (1 + s_w - t_w)
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound
    assert np.abs(np.asarray(regressor.conv.bias[...])).max() <= bound
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(np.array(regressor.conv.bias[...])))
    reference = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(t_c), torch.nn.ReLU()).train()
    x = RNG.normal(size=student_shape).astype(np.float32)
    expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    got = regressor(jnp.asarray(x), train=True)
    np.testing.assert_allclose(np.asarray(got), expected.transpose(0, 2, 3, 1), atol=2e-5)


def test_fitnet_refuses_shapes_mdistiller_cannot_map():
  with pytest.raises(UserError, match="cannot map a 4x4 student hint to a 16x16"):
    fitnet_lib.ConvReg((2, 4, 4, 3), (2, 16, 16, 3), nnx.Rngs(0))
  with pytest.raises(UserError, match="hint_layer=4: the student has 4 stages"):
    _method("fitnet", hint_layer=4).loss(STUDENT, TEACHER, LABELS, 0, Aux())


@functools.lru_cache(maxsize=None)
def _abstract_model(name):
  """Model `name` (100 classes) as shapes only: nothing initialised."""
  return nnx.eval_shape(lambda: models.create(name, 100, rngs=nnx.Rngs(0)))


_FEEDER_STUB = types.SimpleNamespace(info=types.SimpleNamespace(image_size=32))
# Which ConvReg mdistiller builds for stage 2 (student H vs teacher H, METHODS.md 7 shapes).
TRANSPOSED_PAIRS = ("res32x4_shuv1", "wrn40_2_shuv1", "res50_mbv2", "res32x4_shuv2",
                    "wrn40_2_mv2")


def _check_pair(pair):
  """FitNet's regressor maps the student's stage 2 onto the teacher's, and every method's
  loss traces on the pair's real feature shapes (abstract models: nothing computed)."""
  teacher_name, student_name = cifar_common.PAIRS[pair]
  student, teacher = _abstract_model(student_name), _abstract_model(teacher_name)
  setup = Setup(student, teacher, _FEEDER_STUB, nnx.Rngs(0))
  student_features, teacher_features = setup.feature_shapes(student), setup.feature_shapes(teacher)
  regressor = _method("fitnet").extras(setup)
  assert regressor.kind == ("transposed" if pair in TRANSPOSED_PAIRS else "conv"), pair
  if regressor.kind == "conv":
    assert regressor.conv.kernel_size == (1, 1) and regressor.conv.strides == (1, 1), pair
  hint = nnx.eval_shape(lambda r, x: r(x), regressor, student_features["stages"][2])
  assert hint.shape == teacher_features["stages"][2].shape and hint.dtype == jnp.float32, pair
  as_output = lambda f: ModelOutput(jax.ShapeDtypeStruct((2, 100), jnp.float32), f)
  for name in MDISTILLER:
    aux = Aux(regressor if name == "fitnet" else None)
    total = nnx.eval_shape(
        lambda s, t, aux: _method(name).loss(s, t, jnp.zeros(2, jnp.int32), 0, aux)[0],
        as_output(student_features), as_output(teacher_features), aux)
    assert total.shape == () and total.dtype == jnp.float32, (pair, name)


def test_extras_and_losses_fit_a_pair_of_each_regressor_kind():
  for pair in ("res32x4_res8x4", "res32x4_shuv1"):
    _check_pair(pair)


@pytest.mark.slow
def test_extras_and_losses_fit_every_pair():
  for pair in cifar_common.PAIRS:
    _check_pair(pair)


def test_one_fitnet_step_trains_the_regressor_outside_the_student():
  """resnet8 -> resnet8 on 8 devices: the regressor's weights and BatchNorm statistics
  change, and the student handed out for saving has no part of it."""
  config = cifar_fitnet.get_config("smoke")
  config.teacher.model, config.batch_size = "resnet8", 16
  dataset = data.load("cifar10", "synthetic", synthetic_train_size=32, synthetic_test_size=16)
  mesh = train.data_mesh()
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  method = methods.create(config.method)
  student = train.create_student(config, 10)
  teacher = models.create("resnet8", 10, rngs=nnx.Rngs(7))
  extras = method.extras(Setup(student, teacher, feeder, nnx.Rngs(1)))
  trainer = train.Trainer(config, feeder, student, teacher, method, mesh, extras)
  before = jax.device_get((trainer.state.params["extras"], trainer.state.model_state["extras"]))
  trainer.state, metrics = trainer.train_step(trainer.state, None, trainer.frozen,
                                              next(feeder.train_batches(0)))
  after = jax.device_get((trainer.state.params["extras"], trainer.state.model_state["extras"]))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["fitnet"]) > 0
  for name in ("conv", "bn"):
    for a, b in zip(jax.tree.leaves(before[0][name]), jax.tree.leaves(after[0][name])):
      assert not np.allclose(a, b), name  # kernel, bias; BN scale, bias
  assert not np.allclose(before[1]["bn"]["mean"][...], after[1]["bn"]["mean"][...])
  saved = nnx.state(trainer.student())
  fresh = nnx.state(models.create("resnet8", 10, rngs=nnx.Rngs(0)))
  assert jax.tree.structure(saved) == jax.tree.structure(fresh)


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MDISTILLER))
def test_smoke_config_runs_from_main(tmp_path, name):
  result = _main(f"--config=configs/cifar_{name}.py:smoke", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2
