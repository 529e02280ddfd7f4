"""The train loop: 1 vs 8 devices, the optimizer recipe, and main.py end to end.

Exact resume is in test_robustness.py.
"""
import json
import math
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar_cskd, cifar_kd, cifar_nd
from kd_jax import checkpoint, data, methods, models, train
from kd_jax import step as step_lib
from kd_jax.data import feeders
from kd_jax.metrics import read_metrics
from kd_jax.models import layers
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(config_module, teacher_dir, batch_size=16, epochs=2):
  config = config_module.get_config("smoke")
  config.teacher.model = "resnet8"
  config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
  config.batch_size, config.num_epochs = batch_size, epochs
  config.eval_batch_size, config.log_every_steps = 32, 2
  return config


@pytest.fixture(scope="module")
def dataset():
  return data.load("cifar10", "synthetic", synthetic_train_size=64, synthetic_test_size=40)


@pytest.fixture(scope="module")
def micro():
  """The micro CNN (tests/micro_cnn.py) in the model registry for this module."""
  with micro_cnn.registered():
    yield micro_cnn.NAME


# conv/linear layers on the longest path, the L of the bfloat16 bound below
DEPTHS = {"resnet8": 8, micro_cnn.NAME: 2}


@pytest.mark.parametrize("config_module,dtype,model", [
    (cifar_kd, "float32", micro_cnn.NAME), (cifar_kd, "bfloat16", micro_cnn.NAME),
    pytest.param(cifar_cskd, "float32", "resnet8", marks=pytest.mark.slow),
    pytest.param(cifar_nd, "float32", "resnet8", marks=pytest.mark.slow)],
    ids=["kd", "kd_bfloat16", "cskd", "nd_grouped_bn"])
def test_one_step_on_8_devices_equals_1_device(config_module, dtype, model, dataset, request,
                                               micro):
  """Loss terms, updated parameters (so gradients) and BatchNorm statistics agree.

  The default cases (kd, kd_bfloat16) step a micro CNN teacher and student
  (tests/micro_cnn.py): a convolution, BatchNorm over the sharded batch and a
  classifier, the layers that 8 devices change, at a fraction of resnet8's compile time;
  the slow cases (cskd, nd_grouped_bn) a resnet8 student and saved resnet8 teacher.

  The ND case: a projection head (student 64 -> teacher 256 wide) and BatchNorm in
  groups of 8 of the global batch of 16, as the authors' DataParallel (METHODS.md 5).
  bfloat16 (tests/test_precision.py): BatchNorm's float32 batch statistics, reduced in
  another order over 8 devices, differ in the last float32 bits, and that flips the
  bfloat16 rounding (2^-8 relative) of a few normalised activations. The loss terms then
  agree to within one such rounding, the parameter and statistic updates of the step to
  within 4 sqrt(3 L) of them relative (L layers; as tests/test_precision.py), not to
  float32's last bits.
  """
  teacher_dir = request.getfixturevalue("teacher_dir") if model == "resnet8" else ""
  config = _tiny_config(config_module, teacher_dir)
  config.student.model, config.student.dtype = model, dtype
  teacher_model, frozen = model, None
  if config_module is cifar_nd:
    teacher_model, config.student.bn_group_size = "resnet8x4", 8
    frozen = {"class_means": jax.random.normal(jax.random.key(3), (10, 256))}
  method = methods.create(config.method)
  teacher = (checkpoint.load_teacher(teacher_dir, "resnet8", 10) if teacher_model == "resnet8"
             else models.create(teacher_model, 10, rngs=nnx.Rngs(7)))
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    student = train.create_student(config, 10)
    mesh = train.data_mesh(devices)
    feeder = feeders.DeviceFeeder(dataset, config, mesh)
    extras = method.extras(methods.Setup(student, teacher, feeder, nnx.Rngs(1)))
    trainer = train.Trainer(config, feeder, student, teacher, method, mesh, extras, frozen)
    before = jax.device_get((trainer.state.params, trainer.state.model_state))
    state, sums = trainer.train_step(trainer.state, trainer.init_metric_sums(), trainer.frozen,
                                     next(feeder.train_batches(0)))
    assert len(state.params["student"]["conv1"]["kernel"][...].sharding.device_set) == len(devices)
    trainable = nnx.merge(trainer.trainable_def, state.params, state.model_state)
    assert {bn.group_size for _, bn in nnx.iter_graph(trainable)
            if isinstance(bn, layers.BatchNorm)} == {config.student.bn_group_size}
    results.append(jax.device_get((sums, state.params, state.model_state)))
  (sums_1, params_1, stats_1), (sums_8, params_8, stats_8) = results
  assert sums_1.keys() == sums_8.keys() and "loss" in sums_1
  bfloat16 = dtype == "bfloat16"
  for key in sums_1:
    # CSKD terms are 2 T^2 (1 - cos) with cos ~ 1: float32 rounding of cos (~1e-7) under
    # another reduction order shows up as ~3e-6 absolute.
    np.testing.assert_allclose(sums_8[key], sums_1[key], rtol=2.0**-9 if bfloat16 else 2e-5,
                               atol=1e-5, err_msg=key)
  bound = 4 * math.sqrt(3 * DEPTHS[model]) * 2.0**-9
  for a, b, start in zip(jax.tree.leaves(params_1) + jax.tree.leaves(stats_1),
                         jax.tree.leaves(params_8) + jax.tree.leaves(stats_8),
                         jax.tree.leaves(before)):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # the head's dropout RNG
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    if bfloat16 and jnp.issubdtype(a.dtype, jnp.floating):
      update_1, update_8 = np.asarray(a) - start, np.asarray(b) - start
      assert np.linalg.norm(update_8 - update_1) <= bound * np.linalg.norm(update_1) + 1e-7
    else:
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _authors_warmup_cosine(epoch, lr, min_lr, warmup, epochs):
  """The ND authors' DeiT `adjust_learning_rate` (utils.py), epoch = step / steps_per_epoch."""
  if epoch < warmup:
    return lr * epoch / warmup
  return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_warmup_cosine_schedule_is_the_authors_per_step_formula():
  import ml_collections  # pylint: disable=g-import-not-at-top
  optim = ml_collections.ConfigDict(dict(name="adamw", lr=8e-4, weight_decay=0.05,
                                         schedule="warmup_cosine", warmup_epochs=2,
                                         min_lr=1e-6))
  _, schedule = step_lib.make_optimizer(optim, steps_per_epoch=7, num_epochs=6)
  for step in range(0, 6 * 7 + 1):
    expected = _authors_warmup_cosine(step / 7, 8e-4, 1e-6, 2, 6)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12), step


def test_adamw_matches_pytorch_adamw_with_the_authors_decay_groups():
  """optax AdamW with decay_1d=False == torch.optim.AdamW over the authors' two parameter
  groups (`param_groups_weight_decay`: no decay for 1-D parameters and biases)."""
  torch = pytest.importorskip("torch")
  import ml_collections  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  init = {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,)),
          "token": rng.normal(size=(1, 1, 2)), "scale": rng.normal(size=(2,))}
  grads = [{k: rng.normal(size=v.shape) for k, v in init.items()} for _ in range(5)]
  optim = ml_collections.ConfigDict(dict(name="adamw", lr=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                         weight_decay=0.3, decay_1d=False, decay_epochs=()))
  optimizer, _ = step_lib.make_optimizer(optim, steps_per_epoch=10, num_epochs=1)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
  state = optimizer.init(params)
  for grad in grads:
    updates, state = optimizer.update({k: jnp.asarray(v, jnp.float32) for k, v in grad.items()},
                                      state, params)
    params = optax.apply_updates(params, updates)

  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
  decay = [t for k, t in tensors.items() if t.ndim > 1 and k != "bias"]
  no_decay = [t for k, t in tensors.items() if not (t.ndim > 1 and k != "bias")]
  torch_opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                 {"params": decay, "weight_decay": 0.3}], lr=0.1,
                                betas=(0.9, 0.95), eps=1e-8)
  for grad in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(grad[k], dtype=torch.float64)
    torch_opt.step()
  for k, t in tensors.items():
    np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
  assert not np.allclose(params["token"], init["token"] - 0.0)  # trained, and decayed (ndim 3)


def test_optimizer_is_pytorch_sgd_with_step_decay():
  """p <- p - lr * buf, buf <- m * buf + (g + wd * p); lr x0.1 from the first decay step."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  optim = ml_collections.ConfigDict(dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01,
                                         decay_epochs=(2,), decay_factor=0.1))
  optimizer, schedule = step_lib.make_optimizer(optim, steps_per_epoch=3, num_epochs=4)
  assert [float(schedule(s)) for s in (0, 5, 6, 100)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
  params, grad = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])
  state = optimizer.init(params)
  p, buf = np.array([1.0, -2.0]), np.zeros(2)
  for step in range(8):
    updates, state = optimizer.update(grad, state, params)
    params = optax.apply_updates(params, updates)
    buf = 0.9 * buf + (np.array([0.5, 0.25]) + 0.01 * p)
    p = p - (0.1 if step < 6 else 0.01) * buf
  np.testing.assert_allclose(params, p, rtol=1e-5)


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_main_smoke_runs_offline_and_second_run_does_no_work(tmp_path):
  workdir = str(tmp_path / "smoke")
  first = _main("--config=configs/cifar_cskd.py:smoke", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  for name in ("config.json", "run.json", "metrics.jsonl", "summary.json", "checkpoints",
               "final_student", "tensorboard", "teacher/summary.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  evals = read_metrics(workdir, "eval")
  assert [r["epoch"] for r in evals] == [1, 2]
  assert {"cskd", "cskd_cswt", "ce", "images_per_second",
          "flops_per_second"} <= read_metrics(workdir, "train")[0].keys()
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  # XLA's count of one step's FLOPs: at least the student's and teacher's convolutions.
  assert summary["step_flops"] > 0 and summary["images_per_second"] > 0
  assert summary["flops_per_second"] == pytest.approx(
      summary["images_per_second"] / 64 * summary["step_flops"])
  with open(os.path.join(workdir, "run.json")) as f:
    assert json.load(f)["compute_dtype"] == {"student": "float32", "teacher": "float32"}
  second = _main("--config=configs/cifar_cskd.py:smoke", f"--workdir={workdir}")
  assert second.returncode == 0 and "is complete" in second.stderr
  assert len(read_metrics(workdir, "eval")) == 2  # nothing retrained


@pytest.mark.parametrize("override,message", [
    pytest.param("--config.method.name=nope", "unknown method 'nope'", marks=pytest.mark.slow),
    pytest.param("--config.student.model=resnet9", "unknown model 'resnet9'", marks=pytest.mark.slow),
    pytest.param("--config.method.temprature=2.0", 'temprature Did you mean "temperature"', marks=pytest.mark.slow),
    pytest.param("--config.optim.lr=abc", "could not convert string to float: 'abc'", marks=pytest.mark.slow),
    ("--config.teacher.checkpoint=/nonexistent/t.pth", "teacher checkpoint not found"),
    pytest.param("--config.batch_size=0", "config.batch_size=0", marks=pytest.mark.slow),
    ("--config.num_epochs=0", "config.num_epochs=0 must be > 0"),
    pytest.param("--config.method.temperature=0", "config.method.temperature=0.0 must be > 0", marks=pytest.mark.slow),
    pytest.param("--config.optim.decay_epochs=(5,1)", "config.optim.decay_epochs=(5, 1) must be increasing", marks=pytest.mark.slow),
    ("--config=configs/no_such_file.py", "No such file or directory: 'configs/no_such_file.py'"),
    pytest.param("--config=configs/cifar_cskd.py:res32x4_res8x5", "unknown pair 'res32x4_res8x5'", marks=pytest.mark.slow),
    pytest.param("--config=configs/cifar_cskd.py:smoke --config.method.t_low=7", "t_low=7.0 must be <", marks=pytest.mark.slow),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, override, message):
  workdir = tmp_path / "bad"
  config, *override = override.split() if override.startswith("--config=") else (
      "--config=configs/cifar_kd.py:smoke", override)
  result = _main(config, f"--workdir={workdir}", *override)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  if message:
    assert result.returncode == 2
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
  assert not os.path.exists(workdir) or not os.listdir(workdir)


def test_promised_command_without_teachers_is_one_line_and_writes_nothing():
  """The mission's exact command on a machine with no teachers: the default workdir is
  named, and the one line says what is missing and which command fetches it."""
  teacher = "download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
  workdir = os.path.join(REPO, "runs/cifar_cskd/res32x4_res8x4/seed0")
  if os.path.exists(os.path.join(REPO, teacher)) or os.path.exists(workdir):
    pytest.skip("this checkout has the teachers or that run")
  result = _main("--config=configs/cifar_cskd.py")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "workdir: runs/cifar_cskd/res32x4_res8x4/seed0" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: teacher checkpoint not found: {teacher} (config.teacher.checkpoint); "
      "`python -m kd_jax.tools.fetch_teachers cifar100` downloads it")
  assert not os.path.exists(workdir)


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = _main("--config=configs/cifar_ce.py:smoke", f"--workdir={blocker}/run")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot create --workdir={blocker}/run")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cifar_ce.py:smoke", "cifar_kd.py:smoke", "cifar_dkd.py:smoke",
                                    "cifar_dist.py:smoke", "cifar_ls.py:kd,smoke",
                                    "cifar_ls.py:dkd,smoke", "cifar_nd.py:kd_nd,smoke",
                                    "cifar_nd.py:dkd_nd,smoke", "cifar_nd.py:cskd_nd,smoke",
                                    "cifar_cskd_mv.py:smoke", "cifar_ctkd.py:smoke",
                                    "cifar_ctkd.py:dkd,smoke", "cifar_ls.py:ctkd,smoke",
                                    "cifar_mlkd.py:smoke"])
def test_every_smoke_config_runs_from_main(tmp_path, config):
  result = _main(f"--config=configs/{config}", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2


def test_train_step_compiles_once(dataset, micro):
  """Fresh metric sums after a log point must not trigger a second compilation. (The
  micro CNN: the 8-device step of test_one_step_on_8_devices_equals_1_device[kd], so a
  cache hit in the suite.)"""
  config = _tiny_config(cifar_kd, "")
  teacher = models.create(micro, 10, rngs=nnx.Rngs(7))
  feeder = feeders.DeviceFeeder(dataset, config, train.data_mesh())
  trainer = train.Trainer(config, feeder, models.create(micro, 10, rngs=nnx.Rngs(0)),
                          teacher, methods.create(config.method), train.data_mesh())
  batch = next(feeder.train_batches(0))
  sums = trainer.init_metric_sums()
  for reset in (False, False, True, False):  # as the loop: carry the sums, reset at a log
    sums = trainer.init_metric_sums() if reset else sums
    trainer.state, sums = trainer.train_step(trainer.state, sums, trainer.frozen, batch)
  assert trainer.train_step._cache_size() == 1
