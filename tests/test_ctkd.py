"""CTKD (METHODS.md 10): losses against NumPy transcriptions of zhengli97/CTKD, the method's
totals by hand, the gradient reversal's sign and scale on one optimizer step, the cosine
curriculum, the instance-wise module, configs, published numbers, resume and smoke runs."""
import math
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import cifar_ctkd, cifar_ls
from kd_jax import losses, methods, train
from kd_jax import step as step_lib
from kd_jax.methods import Aux, ModelOutput
from kd_jax.methods import ctkd_temperature as temp_lib
from kd_jax.metrics import read_metrics
from kd_jax.tools import plots, published
from tests.loss_reference import central_differences

B, C = 8, 6
RNG = np.random.default_rng(3)
STUDENT = RNG.normal(size=(B, C)) * 2.0
TEACHER = RNG.normal(size=(B, C)) * 3.0
LABELS = RNG.integers(0, C, B)


# ------------------------------------------------ NumPy transcriptions of the authors' code


def _log_softmax(x):
  x = x - x.max(1, keepdims=True)
  return x - np.log(np.exp(x).sum(1, keepdims=True))


def _np_kd(s, t, T):
  """distiller_zoo/KD.py DistillKL: KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) T^2."""
  log_p_t, log_p_s = _log_softmax(t / T), _log_softmax(s / T)
  return np.sum(np.exp(log_p_t) * (log_p_t - log_p_s)) / len(s) * T * T


def _np_kd_instance(s, t, T):
  """README's instance-wise loss: mean over samples of KL_Loss(y_s[i], y_t[i], T[i])."""
  total = 0.0
  for i in range(len(s)):
    out = _log_softmax(s[i:i + 1] / T[i])
    q = np.exp(_log_softmax(t[i:i + 1] / T[i])) + 1e-7
    total += T[i] * T[i] * np.sum(q * (np.log(q) - out))
  return total / len(s)


def _np_normalize(logits):
  """The LS repository's CTKD/distiller_zoo/KD.py normalize: z-score with torch's unbiased std."""
  mean, std = logits.mean(1, keepdims=True), logits.std(1, ddof=1, keepdims=True)
  return (logits - mean) / (1e-7 + std)


def _np_dkd(s, t, y, alpha, beta, T):
  """distiller_zoo/DKD.py DKDloss with a (learnt) temperature (the same code in the LS
  repository's CTKD/distiller_zoo/DKD.py, which takes the raw logits)."""
  gt = np.zeros_like(s, bool)
  gt[np.arange(len(y)), y] = True
  p_s, p_t = np.exp(_log_softmax(s / T)), np.exp(_log_softmax(t / T))
  cat = lambda p: np.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)
  b_s, b_t = cat(p_s), cat(p_t)
  tckd = np.sum(b_t * (np.log(b_t) - np.log(b_s))) * T**2 / len(y)
  p_t2 = np.exp(_log_softmax(t / T - 1000.0 * gt))
  log_s2 = _log_softmax(s / T - 1000.0 * gt)
  nckd = np.sum(np.where(p_t2 > 0, p_t2 * (np.log(np.maximum(p_t2, 1e-300)) - log_s2), 0.0))
  return alpha * tckd + beta * nckd * T**2 / len(y)


def _np_ce(logits, labels):
  return -np.mean(_log_softmax(logits)[np.arange(len(labels)), labels])


def _np_cosine_decay(i, max_value=0.0, min_value=-1.0, loops=10):
  """train_student.py CosineDecay.get_value."""
  i = min(max(i, 0), loops)
  return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (max_value - min_value) + min_value


# ------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("T", [1.7, 15.62])
def test_kd_with_a_learnt_temperature_matches_the_reference_with_gradients(T):
  value, (g_s, g_T) = jax.jit(jax.value_and_grad(losses.kd, argnums=(0, 2)))(
      jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32), jnp.float32(T))
  assert float(value) == pytest.approx(_np_kd(STUDENT, TEACHER, T), rel=1e-5)
  np.testing.assert_allclose(g_s, central_differences(lambda s: _np_kd(s, TEACHER, T), STUDENT),
                             rtol=1e-4, atol=1e-6)
  expected = central_differences(lambda t: _np_kd(STUDENT, TEACHER, float(t)), np.float64(T))
  assert float(g_T) == pytest.approx(float(expected), rel=1e-3, abs=1e-6)


def test_instance_temperature_kd_matches_the_readme_loss_with_gradients():
  T = RNG.uniform(1.5, 18.0, B)
  value, (g_s, g_T) = jax.jit(jax.value_and_grad(losses.kd_instance_temperature,
                                                  argnums=(0, 2)))(
      jnp.asarray(STUDENT, jnp.float32), jnp.asarray(TEACHER, jnp.float32),
      jnp.asarray(T, jnp.float32))
  assert float(value) == pytest.approx(_np_kd_instance(STUDENT, TEACHER, T), rel=1e-5)
  np.testing.assert_allclose(
      g_s, central_differences(lambda s: _np_kd_instance(s, TEACHER, T), STUDENT), rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      g_T, central_differences(lambda t: _np_kd_instance(STUDENT, TEACHER, t), T), rtol=1e-3,
      atol=1e-6)
  # equal temperatures: KD up to the 1e-7 the README adds to the teacher's probabilities
  same = losses.kd_instance_temperature(STUDENT, TEACHER, jnp.full((B,), 4.0))
  assert float(same) == pytest.approx(float(losses.kd(STUDENT, TEACHER, 4.0)), abs=1e-4)


def test_dkd_with_a_learnt_temperature_matches_the_reference():
  value, g_T = jax.jit(jax.value_and_grad(
      lambda t: losses.dkd(STUDENT, TEACHER, LABELS, 1.0, 2.0, t)))(jnp.float32(7.3))
  assert float(value) == pytest.approx(_np_dkd(STUDENT, TEACHER, LABELS, 1.0, 2.0, 7.3),
                                       rel=1e-5)
  expected = central_differences(lambda t: _np_dkd(STUDENT, TEACHER, LABELS, 1.0, 2.0, float(t)),
                           np.float64(7.3))
  assert float(g_T) == pytest.approx(float(expected), rel=1e-3)


# --------------------------------------------------------- curriculum and reversal layer

# The logit-standardization repository's CTKD logs (decay_value per epoch) hold -lambda:
# logs/CTKD/ctkd,resnet32x4,resnet8x4,2,9.txt epochs 1-5 and 10.
LOGGED_DECAY = {1: -0.02447174185242318, 2: -0.09549150281252627, 3: -0.20610737385376343,
                4: -0.3454915028125263, 5: -0.5, 10: -1.0}


@pytest.mark.parametrize("epoch", range(0, 14))
def test_cosine_curriculum_by_hand_and_as_logged(epoch):
  """epoch is kd_jax's 0-based epoch; the authors evaluate at epoch + 1."""
  method = methods.create(ml_collections.ConfigDict({"name": "ctkd"}))
  lam = float(method.curriculum(jnp.asarray(epoch)))
  hand = 1.0 - (math.cos(min(epoch + 1, 10) * math.pi / 10) + 1.0) / 2.0
  assert lam == pytest.approx(hand, abs=1e-6)
  assert lam == pytest.approx(-_np_cosine_decay(epoch + 1), abs=1e-6)
  if epoch + 1 in LOGGED_DECAY:
    assert lam == pytest.approx(-LOGGED_DECAY[epoch + 1], abs=1e-6)


def test_gradient_reversal_is_identity_forward_and_scales_the_gradient():
  f = lambda x, scale: jnp.sum(3.0 * temp_lib.gradient_reversal(x, scale))
  x = jnp.asarray([1.0, -2.0])
  assert float(f(x, -0.5)) == pytest.approx(-3.0)
  np.testing.assert_allclose(jax.grad(f)(x, jnp.float32(-0.5)), [-1.5, -1.5])
  np.testing.assert_allclose(jax.grad(f, argnums=1)(x, jnp.float32(-0.5)), 0.0)


def _outputs():
  return (ModelOutput(jnp.asarray(STUDENT, jnp.float32), {}),
          ModelOutput(jnp.asarray(TEACHER, jnp.float32), {}))


def _create(**fields):
  return methods.create(ml_collections.ConfigDict({"name": "ctkd", **fields}))


@pytest.mark.parametrize("epoch", [0, 3, 20])
def test_one_sgd_step_moves_the_temperature_up_the_kd_loss_scaled_by_lambda(epoch):
  """The student's optimizer (weight decay off here) moves r by lr * lambda(e) * kd_weight *
  dKD/dr: towards a *larger* distillation loss, as much as the curriculum allows."""
  method = _create(kd_weight=0.9)
  module = temp_lib.GlobalTemperature()
  student, teacher = _outputs()
  labels = jnp.asarray(LABELS)

  def total(module):
    return method.loss(student, teacher, labels, jnp.asarray(epoch), Aux(extras=module))[0]

  grads = nnx.grad(total)(module)
  params = nnx.state(module, nnx.Param)
  optim = ml_collections.ConfigDict(dict(lr=0.05, momentum=0.9, nesterov=False,
                                         weight_decay=0.0, decay_epochs=(), decay_factor=0.1))
  optimizer, _ = step_lib.make_optimizer(optim, steps_per_epoch=10, num_epochs=1)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  new_raw = float(optax.apply_updates(params, updates)["raw"][...])

  kd_of_raw = lambda r: _np_kd(STUDENT, TEACHER, 1.0 + 20.0 / (1.0 + math.exp(-r)))
  dkd_dr = float(central_differences(lambda r: kd_of_raw(float(r)), np.float64(1.0)))
  lam = 1.0 - (math.cos(min(epoch + 1, 10) * math.pi / 10) + 1.0) / 2.0
  assert new_raw - 1.0 == pytest.approx(0.05 * lam * 0.9 * dkd_dr, rel=1e-3)
  assert kd_of_raw(new_raw) > kd_of_raw(1.0)


def test_method_totals_by_hand_global_dkd_and_standardized():
  student, teacher = _outputs()
  labels = jnp.asarray(LABELS)
  module = temp_lib.GlobalTemperature()
  T = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # r initialised to 1: T = 15.62
  total, metrics = _create().loss(student, teacher, labels, jnp.asarray(0), Aux(extras=module))
  expected = 0.1 * _np_ce(STUDENT, LABELS) + 0.9 * _np_kd(STUDENT, TEACHER, T)
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["ctkd_t_mean"]) == pytest.approx(T, rel=1e-6)
  assert float(metrics["ctkd_t_std"]) == 0.0
  assert float(metrics["ctkd_lambda"]) == pytest.approx(-LOGGED_DECAY[1], rel=1e-6)
  assert set(metrics) == {"ce", "kd", "ctkd_t_mean", "ctkd_t_std", "ctkd_lambda"}

  dkd = _create(ce_weight=1.0, kd_weight=0.0, dkd_weight=1.0, alpha=1.0, beta=2.0)
  total, metrics = dkd.loss(student, teacher, labels, jnp.asarray(0), Aux(extras=module))
  expected = _np_ce(STUDENT, LABELS) + _np_dkd(STUDENT, TEACHER, LABELS, 1.0, 2.0, T)
  assert float(total) == pytest.approx(expected, rel=1e-5) and "kd" not in metrics

  z = _np_normalize
  ls = _create(kd_weight=9.0, t_start=2.0, standardize=True)
  total, _ = ls.loss(student, teacher, labels, jnp.asarray(5), Aux(extras=module))
  T = 2.0 + 20.0 / (1.0 + math.exp(-1.0))
  expected = 0.1 * _np_ce(STUDENT, LABELS) + 9.0 * _np_kd(z(STUDENT), z(TEACHER), T)
  assert float(total) == pytest.approx(expected, rel=1e-5)


def test_standardized_dkd_base_keeps_dkd_on_raw_logits_as_the_ls_ctkd_copy():
  """LS repository CTKD/helper/loops.py: loss = gamma CE + alpha criterion_div(logit_s,
  logit_t, temp) + beta DKDloss(logit_s, logit_t, target, ...): with standardization on,
  criterion_div is DistillKL_logit_stand (z-scored KD) and DKDloss sees the raw logits."""
  student, teacher = _outputs()
  T = 1.0 + 20.0 / (1.0 + math.exp(-1.0))
  method = _create(ce_weight=1.0, kd_weight=0.5, dkd_weight=1.0, alpha=1.0, beta=2.0,
                   standardize=True)
  total, metrics = method.loss(student, teacher, jnp.asarray(LABELS), jnp.asarray(0),
                               Aux(extras=temp_lib.GlobalTemperature()))
  kd = 0.5 * _np_kd(_np_normalize(STUDENT), _np_normalize(TEACHER), T)
  dkd = _np_dkd(STUDENT, TEACHER, LABELS, 1.0, 2.0, T)
  assert float(metrics["kd"]) == pytest.approx(kd, rel=1e-5)
  assert float(metrics["dkd"]) == pytest.approx(dkd, rel=1e-5)
  assert float(total) == pytest.approx(_np_ce(STUDENT, LABELS) + kd + dkd, rel=1e-5)
  assert method.formula().endswith(
      ", KD term on both sides' logits z-scored per sample (LS), DKD term on raw logits "
      "(as the LS repository's CTKD/ copy)")


def test_instance_module_starts_at_mid_range_takes_no_student_gradient_and_learns():
  method = _create(temperature_module="instance", instance_hidden=16, t_start=1.0, t_end=20.0)
  module = temp_lib.InstanceTemperature(C, hidden=16, topk=100, rngs=nnx.Rngs(0))
  assert module.topk == C and module.hidden.kernel.shape == (2 * C, 16)
  student, teacher = _outputs()

  @nnx.jit
  def run(module, student_logits):
    loss = lambda m: method.loss(ModelOutput(student_logits, {}), teacher, jnp.asarray(LABELS),
                                 jnp.asarray(4), Aux(extras=m))
    (total, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(module)
    # how the module's output depends on the student logits (it must not)
    raw = lambda m, s: jnp.sum(m(teacher.logits, s, jnp.float32(-1.0)))
    return total, metrics, grads, nnx.grad(raw, argnums=1)(module, student_logits)

  total, metrics, grads, raw_grad = run(module, student.logits)
  assert float(metrics["ctkd_t_mean"]) == pytest.approx(11.0) and float(metrics["ctkd_t_std"]) == 0
  np.testing.assert_array_equal(raw_grad, 0.0)
  # every sample at T = 11: CE + kd_weight * the README's per-sample KD
  expected = 0.1 * _np_ce(STUDENT, LABELS) + 0.9 * _np_kd_instance(STUDENT, TEACHER,
                                                                     np.full(B, 11.0))
  assert float(total) == pytest.approx(expected, rel=1e-5)
  # the (zero-initialised) last layer gets the reversed gradient: -lambda * d(0.9 KD)/dr
  dkd_dr = central_differences(lambda r: 0.9 * _np_kd_instance(
      STUDENT, TEACHER, 1.0 + 20.0 / (1.0 + np.exp(-r))), np.zeros(B))
  lam = 1.0 - (math.cos(5 * math.pi / 10) + 1.0) / 2.0
  assert float(grads["out"]["bias"][...][0]) == pytest.approx(-lam * dkd_dr.sum(), rel=1e-3)


@pytest.mark.parametrize("fields,message", [
    (dict(temperature_module="instance", dkd_weight=1.0), "takes the KD term only"),
    (dict(temperature_module="local"), "temperature_module='local'; valid: global, instance"),
    (dict(t_start=0.0), "t_start=0.0 must be > 0"),
    (dict(curriculum_epochs=0), "curriculum_epochs=0 must be > 0"),
])
def test_bad_fields_are_user_errors(fields, message):
  with pytest.raises(Exception, match=message):
    _create(**fields)


# -------------------------------------------------------------- configs and published

PAIRS = ("res56_res20", "res32x4_res8x4", "vgg13_mv2", "wrn40_2_shuv1")


@pytest.mark.parametrize("pair", PAIRS)
def test_configs_follow_the_authors_scripts(pair):
  method = cifar_ctkd.get_config(pair).method
  assert (method.ce_weight, method.kd_weight, method.dkd_weight) == (0.1, 0.9, 0.0)
  assert (method.temperature_module, method.t_start, method.t_end) == ("global", 1.0, 20.0)
  assert (method.lambda_start, method.lambda_end, method.curriculum_epochs) == (0.0, 1.0, 10)
  dkd = cifar_ctkd.get_config(f"dkd,{pair}").method
  assert (dkd.ce_weight, dkd.kd_weight, dkd.dkd_weight, dkd.alpha) == (1.0, 0.0, 1.0, 1.0)
  assert dkd.beta == {"res56_res20": 2.0, "vgg13_mv2": 6.0}.get(pair, 8.0)
  ls = cifar_ls.get_config(f"ctkd,{pair}")
  assert ls.method.standardize and (ls.method.kd_weight, ls.method.t_start) == (9.0, 2.0)
  has_log = pair != "wrn40_2_shuv1"
  assert ("logs/CTKD/ctkd," in ls.source) == has_log


@pytest.mark.parametrize("pair,teacher,student,ctkd,ctkd_ls", [
    ("res56_res20", "resnet56", "resnet20", 71.19, 71.34),
    ("res32x4_res8x4", "resnet32x4", "resnet8x4", 73.39, 76.67),
    ("res50_mbv2", "ResNet50", "MobileNetV2", 68.67, 69.36),
    ("wrn40_2_shuv1", "wrn_40_2", "ShuffleV1", None, None),
])
def test_published_numbers_of_ctkd_and_ctkd_ls(pair, teacher, student, ctkd, ctkd_ls):
  """The LS README's CTKD and CTKD+Ours columns (written here from that README)."""
  for config, number in ((cifar_ctkd.get_config(pair), ctkd),
                         (cifar_ls.get_config(f"ctkd,{pair}"), ctkd_ls)):
    assert published.for_config(config.to_dict()) == number
  assert published.published_method(cifar_ctkd.get_config(pair).method) == "CTKD"
  assert published.published_method(cifar_ls.get_config(f"ctkd,{pair}").method) == "CTKD+LS"
  for other in (cifar_ctkd.get_config(f"dkd,{pair}").method,
                dict(cifar_ctkd.get_config(pair).method, temperature_module="instance")):
    assert published.published_method(other) is None


# ------------------------------------------------------- training: resume, smoke, plots


def _saved_state(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  manager.close()
  return jax.device_get(restored.state)


def _value(leaf):
  return leaf["value"] if isinstance(leaf, dict) else leaf


@pytest.mark.slow  # three short runs (~1 min on 2 cores)
def test_stop_and_resume_keeps_the_temperature_bit_identical(tmp_path, dataset, teacher_dir):
  config = cifar_ctkd.get_config("smoke")
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      "resnet8", teacher_dir, 0)
  config.data.synthetic_train_size, config.data.synthetic_test_size = 64, 32
  config.batch_size, config.num_epochs, config.optim.decay_epochs = 16, 1, ()
  config.eval_batch_size, config.log_every_steps = 32, 1
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train.train_and_evaluate(config, straight, dataset).finished
  assert train.train_and_evaluate(config, resumed, dataset, max_steps=2).stopped_at == 2
  raw_at_2 = float(_value(_saved_state(resumed)["params"]["extras"]["raw"]))
  assert raw_at_2 != 1.0  # trained, and saved with the run
  assert train.train_and_evaluate(config, resumed, dataset).finished
  a, b = _saved_state(straight), _saved_state(resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # the T logged at step 3 (after the resume) is the one the checkpoint of step 2 held
  logged = {r["step"]: r["ctkd_t_mean"] for r in read_metrics(resumed, "train")}
  assert logged[3] == pytest.approx(1.0 + 20.0 / (1.0 + math.exp(-raw_at_2)), rel=1e-6)
  assert float(_value(b["params"]["extras"]["raw"])) != raw_at_2


@pytest.mark.slow
def test_instance_smoke_run_from_main_logs_and_plots_the_temperature(tmp_path):
  from tests.test_train import _main  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "runs" / "ctkd_instance"
  result = _main("--config=configs/cifar_ctkd.py:smoke", f"--workdir={workdir}",
                 "--config.method.temperature_module=instance")
  assert result.returncode == 0, result.stderr[-3000:]
  train_records = read_metrics(str(workdir), "train")
  assert all({"ctkd_t_mean", "ctkd_t_std", "ctkd_lambda"} <= r.keys() for r in train_records)
  assert train_records[-1]["ctkd_t_std"] > 0  # one temperature per sample
  paths = plots.plot_all(str(tmp_path / "runs"), str(tmp_path / "plots"))
  assert any(p.endswith("_ctkd_temperature.png") for p in paths)
