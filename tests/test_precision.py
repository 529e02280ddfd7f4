"""Mixed precision (config.student.dtype / config.teacher.dtype = "bfloat16"): bfloat16
convolutions and matmuls; float32 parameters, optimizer state, BatchNorm/LayerNorm
statistics and normalisation, softmax, losses and the methods' extras.

Tolerance. bfloat16 keeps 8 significant bits, so one rounding moves a value by at most
u = 2^-9 relative. A network of L convolution/linear layers rounds each layer's input,
weights and output, ~3L roundings in all; float32 normalisation keeps every layer's scale,
so the errors add roughly as independent ones: a relative L2 error of about sqrt(3L) u
in the logits and features. We allow 4 sqrt(3L) u (e.g. 3.4% for resnet8's 8 layers,
5% for an 18-layer net). A loss term is a smooth function of those outputs (softmax,
cosines, means of squares, all in float32), so it gets the same bound relative to its
float32 value. The two results must also differ: the bfloat16 path really ran in bfloat16.
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

U = 2.0 ** -9  # bfloat16's unit roundoff


def _bound(model):
  layers = sum(isinstance(m, (nnx.Conv, nnx.Linear)) for _, m in nnx.iter_graph(model))
  return 4 * math.sqrt(3 * layers) * U


def _relative_error(low, high):
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  return np.linalg.norm(low - high) / np.linalg.norm(high)


def _tiny_regnet(dtype):
  """A two-stage RegNetY (grouped convs, SE, the stem) small enough for the default suite."""
  return regnet.RegNet(((16, 1, 8), (32, 1, 8)), 10, dtype=dtype, rngs=nnx.Rngs(0))


BUILDERS = {
    "resnet8": lambda dtype: models.create("resnet8", 10, rngs=nnx.Rngs(0), dtype=dtype),
    "regnety_tiny": _tiny_regnet,
    "deit_micro_distilled_patch16_64": lambda dtype: models.create(
        "deit_micro_distilled_patch16_64", 10, rngs=nnx.Rngs(0), dtype=dtype),
}
# Every other family of the zoo at CIFAR size (ImageNet CNNs at 64x64) in the slow suite.
# The depthwise/grouped-convolution nets at initialisation, in train mode on a batch of 8,
# amplify the rounding about 2x a stage instead of adding it up: MobileNetV2's stage errors
# were 0.3%, 1.4%, 2.9%, 13%, 35%; logits MobileNetV2 23% (bound 9.9%), ShuffleV1 11.9%
# (9.6%), ShuffleV2 10.24% (10.22%), imagenet_mobilenetv1 17.5% (7.2%). Kept as strict
# expected failures until a bfloat16 training run of these students is measured.
AMPLIFYING = pytest.mark.xfail(strict=True, reason="amplifies bfloat16 rounding at init")
SLOW_FAMILIES = ("wrn_16_1", "vgg8", pytest.param("MobileNetV2", marks=AMPLIFYING),
                 pytest.param("ShuffleV1", marks=AMPLIFYING),
                 pytest.param("ShuffleV2", marks=AMPLIFYING), "ResNet18",
                 "imagenet_resnet18", pytest.param("imagenet_mobilenetv1", marks=AMPLIFYING),
                 "vit_micro_patch16_64")


def _forward_both(build, size):
  """(float32 model, (logits, features) in float32, the same in bfloat16) on fixed images
  in train mode (batch statistics, as in training)."""
  images = jax.random.normal(jax.random.key(1), (8, size, size, 3), jnp.float32)
  outputs = []
  for dtype in (jnp.float32, jnp.bfloat16):
    model = build(dtype)
    outputs.append(nnx.jit(lambda m, x: m(x, train=True))(model, images))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  return model, outputs


def _check_family(build, size):
  model, ((logits, features), (low_logits, low_features)) = _forward_both(build, size)
  assert low_logits.dtype == jnp.bfloat16 and features["pooled"].dtype == jnp.float32
  bound = _bound(model)
  for name, low, high in [("logits", low_logits, logits),
                          ("pooled", low_features["pooled"], features["pooled"]),
                          *[(f"stage {i}", lo, hi) for i, (lo, hi) in enumerate(
                              zip(low_features["stages"], features["stages"]))]]:
    error = _relative_error(low, high)
    assert 0 < error < bound, (name, error, bound)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bfloat16_outputs_within_the_rounding_bound(name):
  _check_family(BUILDERS[name], 64 if "64" in name or "regnet" in name else 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_FAMILIES)
def test_bfloat16_outputs_within_the_rounding_bound_every_family(name):
  build = lambda dtype: models.create(name, 10, rngs=nnx.Rngs(0), dtype=dtype)
  _check_family(build, 64 if name.startswith(("imagenet_", "vit_")) else 32)


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
