"""Mixed precision (config.student.dtype / config.teacher.dtype = "bfloat16"): bfloat16
convolutions and matmuls; float32 parameters, optimizer state, BatchNorm/LayerNorm
statistics and normalisation, softmax, losses and the methods' extras.

Tolerance of the models' outputs. bfloat16 keeps 8 significant bits: each rounding moves a
value by at most u = 2^-8 relative. How far those roundings move a network's outputs
depends on the network: in train mode at initialisation the depthwise/grouped nets
amplify any perturbation about 1.1-1.3x a layer (MobileNetV2's error grows from 0.3% after
its first BatchNorm to 38% at its last, smoothly, with no channel whose batch mean is large
against its standard deviation), so one bound in u and the depth cannot hold for all.
The reference is therefore the network itself: tests/bfloat16_noise.py runs the bfloat16
computation in float32 with every bfloat16 rounding replaced by an independent draw of
round-to-nearest's error at that value (uniform in +-half a bfloat16 spacing). The real
bfloat16 result is one more draw of that kind, so its error against float32 must be within
C = 2 times the mean error of SEEDS = 3 such draws. Measured logits errors (bfloat16;
the mean of 4 draws): resnet8 0.37% (0.39%), wrn_16_1 0.39% (0.58%), vgg8 0.37% (0.64%),
ResNet18 0.91% (1.25%), imagenet_resnet18 2.1% (3.0%), RegNetY (two stages) 0.53%
(0.66%), MobileNetV2 23% (27%), ShuffleV1 12% (16%), ShuffleV2 10% (14%),
imagenet_mobilenetv1 18% (25%), vit_micro 0.84% (1.0%), deit_micro 0.61% (0.78%); over
logits, pooled features and stages the largest ratio was 0.97 (wrn_16_1), and the draws
stayed within 16% of their mean. So 2x leaves room for an unlucky draw, and fails when
bfloat16 moves the outputs twice as far as independent round-to-nearest errors would
(e.g. roundings the policy should not have: a normalisation or a sum in bfloat16). The
error must also be positive: the bfloat16 path really ran in bfloat16.

Tolerance of the loss terms: a network of L convolution/linear layers rounds each layer's
input, weights and output, ~3L roundings, which add roughly as independent ones in networks
that do not amplify (resnet8: the noise model's logits error 0.39% against sqrt(3L) u =
1.9%); we allow 4 sqrt(3L) u relative, a loss term being a smooth function of the outputs
(softmax, cosines, means of squares, all in float32).
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar_crd, cifar_dkd, cifar_fitnet, cifar_kd, cifar_nd, cifar_reviewkd
from kd_jax import checkpoint, methods, models, train, validate
from kd_jax.data import feeders
from kd_jax.errors import UserError
from kd_jax.models import regnet
from kd_jax.tools import recipe
from tests import bfloat16_noise

U = 2.0 ** -8  # bfloat16's unit roundoff
SEEDS, C = 3, 2  # draws of the rounding-noise model; allowed multiple of their mean error


def _bound(model):
  layers = sum(isinstance(m, (nnx.Conv, nnx.Linear)) for _, m in nnx.iter_graph(model))
  return 4 * math.sqrt(3 * layers) * U


def _relative_error(low, high):
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  return np.linalg.norm(low - high) / np.linalg.norm(high)


def _tiny_regnet(dtype):
  """A two-stage RegNetY (grouped convs, SE, the stem) small enough for the default suite."""
  return regnet.RegNet(((16, 1, 8), (32, 1, 8)), 10, dtype=dtype, rngs=nnx.Rngs(0))


_create = lambda name: lambda dtype: models.create(name, 10, rngs=nnx.Rngs(0), dtype=dtype)
# A CNN and a ViT in the default suite; every other family of the zoo at CIFAR size
# (ImageNet nets at 64x64) in the slow suite.
BUILDERS = {"resnet8": _create("resnet8"),
            "deit_micro_distilled_patch16_64": _create("deit_micro_distilled_patch16_64")}
SLOW_BUILDERS = {"regnety_tiny": _tiny_regnet, **{name: _create(name) for name in (
    "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18",
    "imagenet_resnet18", "imagenet_mobilenetv1", "vit_micro_patch16_64")}}
_size = lambda name: 64 if name.startswith(("imagenet_", "vit_", "deit_", "regnet")) else 32


def _outputs(logits, features):
  return {"logits": logits, "pooled": features["pooled"],
          **{f"stage {i}": stage for i, stage in enumerate(features["stages"])}}


def _check_family(build, size):
  """bfloat16's error of logits, pooled features and stage outputs against float32, on fixed
  images in train mode (batch statistics, as in training), within C times the mean error of
  SEEDS runs of the rounding-noise model (tests/bfloat16_noise.py), and not zero."""
  images = jax.random.normal(jax.random.key(1), (8, size, size, 3), jnp.float32)
  runs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = build(dtype)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    graph, state = nnx.split(model)
    forward = lambda state, x, graph=graph: nnx.merge(graph, state)(x, train=True)
    runs[dtype] = forward, state, jax.jit(forward)(state, images)
  high = _outputs(*runs[jnp.float32][2])
  forward, state, (low_logits, low_features) = runs[jnp.bfloat16]
  assert low_logits.dtype == jnp.bfloat16
  low = _outputs(low_logits, low_features)
  noisy = bfloat16_noise.noisy_float32(forward)
  draws = [_outputs(*noisy(jax.random.key(seed), state, images)) for seed in range(SEEDS)]
  for name in high:
    error = _relative_error(low[name], high[name])
    model = np.mean([_relative_error(draw[name], high[name]) for draw in draws])
    assert 0 < error < C * model, (name, error, model)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bfloat16_outputs_within_the_rounding_noise_model(name):
  _check_family(BUILDERS[name], _size(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_BUILDERS))
def test_bfloat16_outputs_within_the_rounding_noise_model_every_family(name):
  _check_family(SLOW_BUILDERS[name], _size(name))


def _tiny_config(config_module, arg, teacher_dir, dtype):
  config = config_module.get_config(arg)
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      "resnet8", teacher_dir, 0)
  config.batch_size, config.num_epochs, config.eval_batch_size = 16, 2, 32
  config.student.dtype = dtype
  if config.student.bn_group_size:  # ND's per-GPU BatchNorm groups, scaled to the batch
    config.student.bn_group_size = 8
  return config


def _one_step_terms(config, dataset, teacher_dir):
  """The loss terms of one train step of `config` (its student from the same seed)."""
  method = methods.create(config.method)
  teacher = checkpoint.load_teacher(teacher_dir, "resnet8", 10)
  mesh = train.data_mesh()  # where load_teacher puts the teacher: every device
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  student = train.create_student(config, 10)
  setup = methods.Setup(student, teacher, feeder, nnx.Rngs(1),
                        lambda name, shape, compute: compute())
  trainer = train.Trainer(config, feeder, student, teacher, method, mesh, method.extras(setup),
                          method.frozen(setup))
  _, sums = trainer.train_step(trainer.state, trainer.init_metric_sums(), trainer.frozen,
                               next(feeder.train_batches(0)))
  sums = jax.device_get(sums)
  sums.pop("first_nonfinite_step")
  return sums, _bound(student)


METHOD_CONFIGS = {
    "kd": (cifar_kd, "smoke"),
    "dkd": (cifar_dkd, "smoke"),
    "kd_nd": (cifar_nd, "kd_nd,smoke"),
    "fitnet": (cifar_fitnet, "smoke"),
    "crd": (cifar_crd, "smoke"),
    "reviewkd": (cifar_reviewkd, "smoke"),
}


@pytest.mark.parametrize("name", [
    "kd", *[pytest.param(n, marks=pytest.mark.slow) for n in METHOD_CONFIGS if n != "kd"]])
def test_bfloat16_student_loss_terms_within_the_rounding_bound(name, dataset, teacher_dir):
  config_module, arg = METHOD_CONFIGS[name]
  terms, bound = _one_step_terms(_tiny_config(config_module, arg, teacher_dir, "float32"),
                                 dataset, teacher_dir)
  low, _ = _one_step_terms(_tiny_config(config_module, arg, teacher_dir, "bfloat16"),
                           dataset, teacher_dir)
  assert terms.keys() == low.keys() and "loss" in terms
  for key in terms:
    if key == "top1":  # a count of argmax agreements, not a smooth function
      continue
    assert abs(low[key] - terms[key]) <= bound * abs(terms[key]) + 1e-6, (key, low[key],
                                                                          terms[key])
  assert low["loss"] != terms["loss"]


def _accuracy_margin(top1, test_size):
  """Two standard errors of the difference of two independent top-1 estimates on
  `test_size` images: 2 sqrt(2 p (1 - p) / n), in points."""
  p = top1 / 100
  return 100 * 2 * math.sqrt(2 * p * (1 - p) / test_size)


def _run_both(config, tmp_path):
  """best top-1 of `config` trained in float32 and in bfloat16 (student, and the teacher it
  bootstraps), each from scratch in its own workdir."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    run = config.copy_and_resolve_references()
    run.student.dtype = dtype
    results[dtype] = train.train_and_evaluate(run, str(tmp_path / dtype)).best_top1
  return results


@pytest.mark.slow
def test_bfloat16_smoke_run_reaches_float32_accuracy(tmp_path):
  config = cifar_kd.get_config("smoke")
  top1 = _run_both(config, tmp_path)
  margin = _accuracy_margin(top1["float32"], config.data.synthetic_test_size)
  assert top1["bfloat16"] >= top1["float32"] - margin, (top1, margin)


@pytest.mark.slow
def test_bfloat16_twenty_epoch_cifar_run_reaches_float32_accuracy(tmp_path):
  """20 epochs of the KD recipe on synthetic CIFAR-100-shaped data (resnet14 -> resnet8,
  the teacher bootstrapped for 20 epochs), lr decayed at 15: long enough for bfloat16's
  rounding of the updates' effect on the weights to show, if it mattered."""
  config = cifar_kd.get_config("smoke")
  config.data.dataset = "cifar100"
  config.data.synthetic_train_size, config.data.synthetic_test_size = 4096, 1000
  config.num_epochs = config.teacher.train_epochs = 20
  config.optim.decay_epochs = (15,)
  config.eval_batch_size, config.log_every_steps = 200, 64
  top1 = _run_both(config, tmp_path)
  margin = _accuracy_margin(top1["float32"], config.data.synthetic_test_size)
  assert top1["bfloat16"] >= top1["float32"] - margin, (top1, margin)


def test_recipe_card_names_the_compute_and_bad_dtypes_are_refused():
  config = cifar_kd.get_config("res32x4_res8x4")
  config.student.dtype = "bfloat16"
  card = dict(recipe.card(config))
  assert "bfloat16 compute, float32 parameters and normalisation" in card["student"]
  assert "; float32, frozen" in card["teacher"]
  config.student.dtype = "float16"
  with pytest.raises(UserError, match="config.student.dtype='float16' must be one of float32, "
                                      "bfloat16"):
    validate.check(config)
