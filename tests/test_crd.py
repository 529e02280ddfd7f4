"""CRD (METHODS.md 9): the NCE total against a NumPy transcription of RepDistiller's
crd/memory.py + crd/criterion.py, the negative sampling of mdistiller's CIFAR sampler, the
memory update, extras for every pair, 1 vs 8 devices, and exact resume banks included."""
import os
import types

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import cifar_common, cifar_crd
from kd_jax import checkpoint, evaluation, losses, methods, models, train
from kd_jax import step as step_lib
from kd_jax.data import batching, feeders
from kd_jax.errors import UserError
from kd_jax.methods import Aux, ModelOutput, Setup
from kd_jax.methods import crd as crd_lib
from kd_jax.metrics import read_metrics
from kd_jax.tools import published, recipe
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)
# A training split of 40 examples in 5 unequal classes; a batch of 8 of them.
NUM_TRAIN, NUM_CLASSES, B, D_S, D_T, FEAT = 40, 5, 8, 6, 7, 4
TRAIN_LABELS = np.repeat(np.arange(NUM_CLASSES), [4, 6, 8, 10, 12])[RNG.permutation(NUM_TRAIN)]
INDEX = np.asarray(RNG.permutation(NUM_TRAIN)[:B], np.int32)
LABELS = TRAIN_LABELS[INDEX].astype(np.int32)


def _method(**fields):
  return methods.create(ml_collections.ConfigDict(dict(name="crd", **fields)))


def _outputs(rng):
  make = lambda dim: ModelOutput(jnp.asarray(rng.normal(size=(B, 10)) * 2, jnp.float32),
                                 {"pooled": jnp.asarray(np.abs(rng.normal(size=(B, dim))),
                                                        jnp.float32)})
  return make(D_S), make(D_T)


def _modules(seed=0):
  return crd_lib.CRDModules(D_S, D_T, FEAT, NUM_TRAIN, nnx.Rngs(seed))


def _table():
  return crd_lib.negatives_table(TRAIN_LABELS, NUM_CLASSES)


# ----------------------------------------------------------- the NumPy reference (float64)


def _np_contrast_loss(x, n_data):
  """crd/criterion.py ContrastLoss.forward."""
  eps, bsz, m = 1e-7, x.shape[0], x.shape[1] - 1
  pn = 1 / float(n_data)
  p_pos = x[:, 0]
  log_d1 = np.log(p_pos / (p_pos + m * pn + eps))
  p_neg = x[:, 1:]
  log_d0 = np.log(np.full_like(p_neg, m * pn) / (p_neg + m * pn + eps))
  return -(log_d1.sum(0) + log_d0.reshape(-1, 1).sum(0)) / bsz


def _np_embed(x, kernel, bias):
  """crd/criterion.py Embed: Linear then Normalize(2)."""
  x = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
  return x / np.power(np.power(x, 2).sum(1, keepdims=True), 0.5)


def _np_crd(f_s, f_t, heads, memory_v1, memory_v2, y, idx, z_v1, z_v2, nce_t, momentum):
  """CRDLoss.forward with ContrastMemory.forward: (loss, Z_v1, Z_v2, memory_v1, memory_v2)."""
  v1, v2 = _np_embed(f_s, *heads[0]), _np_embed(f_t, *heads[1])
  memory_v1, memory_v2 = np.array(memory_v1, np.float64), np.array(memory_v2, np.float64)
  output_size = memory_v1.shape[0]
  weight_v1 = memory_v1[idx.reshape(-1)].reshape(*idx.shape, -1)
  out_v2 = np.exp(np.einsum("bkd,bd->bk", weight_v1, v2) / nce_t)
  weight_v2 = memory_v2[idx.reshape(-1)].reshape(*idx.shape, -1)
  out_v1 = np.exp(np.einsum("bkd,bd->bk", weight_v2, v1) / nce_t)
  if z_v1 < 0:
    z_v1 = out_v1.mean() * output_size
  if z_v2 < 0:
    z_v2 = out_v2.mean() * output_size
  out_v1, out_v2 = out_v1 / z_v1, out_v2 / z_v2
  for memory, v in ((memory_v1, v1), (memory_v2, v2)):
    pos = memory[y] * momentum + v * (1 - momentum)
    memory[y] = pos / np.power(np.power(pos, 2).sum(1, keepdims=True), 0.5)
  loss = _np_contrast_loss(out_v1, output_size) + _np_contrast_loss(out_v2, output_size)
  return float(loss[0]), z_v1, z_v2, memory_v1, memory_v2


def _np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


def _state(modules):
  """(heads, memory_v1, memory_v2, Z_v1, Z_v2) as NumPy."""
  heads = [(np.asarray(linear.kernel[...]), np.asarray(linear.bias[...]))
           for linear in (modules.embed_student, modules.embed_teacher)]
  return (heads, np.asarray(modules.memory_student[...]), np.asarray(modules.memory_teacher[...]),
          float(modules.z_student[...]), float(modules.z_teacher[...]))


_DRAW = jax.jit(crd_lib.contrast_indices, static_argnums=4)


def _drawn(modules, k):
  """The contrast indices the next loss call will use (the key is state: reproducible)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(modules.sampler_key[...]),
                           modules.draws[...])
  return np.asarray(_DRAW(key, jnp.asarray(INDEX), jnp.asarray(LABELS), _table(), k))


# --------------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_total_equals_numpy_transcription_of_the_reference(kd_weight):
  """Two steps: the first sets Z from its batch, the second reuses it; CE (+ KD) added,
  the memory rows of the batch updated as ContrastMemory does, the counter advanced."""
  method = _method(crd_weight=0.8, kd_weight=kd_weight, feat_dim=FEAT, nce_k=6, nce_t=0.07,
                   nce_m=0.5)
  modules, rng = _modules(), np.random.default_rng(1)
  loss = nnx.jit(lambda modules, student, teacher: method.loss(  # one compilation
      student, teacher, jnp.asarray(LABELS), jnp.asarray(0),
      Aux(modules, _table(), jnp.asarray(INDEX))))
  for step in range(2):
    student, teacher = _outputs(rng)
    heads, memory_v1, memory_v2, z_v1, z_v2 = _state(modules)
    idx = _drawn(modules, 6)
    assert (z_v1 < 0) == (z_v2 < 0) == (step == 0)
    crd, z_v1, z_v2, memory_v1, memory_v2 = _np_crd(
        student.features["pooled"], teacher.features["pooled"], heads, memory_v1, memory_v2,
        INDEX, idx, z_v1, z_v2, 0.07, 0.5)
    total, terms = loss(modules, student, teacher)
    ce = _np_ce(student.logits, LABELS)
    kd = float(losses.kd(student.logits, teacher.logits, 4.0))
    assert float(terms["crd"]) == pytest.approx(0.8 * crd, rel=1e-5)
    assert float(total) == pytest.approx(ce + 0.8 * crd + kd_weight * kd, rel=1e-5)
    assert ("kd" in terms) == bool(kd_weight)
    assert float(modules.z_student[...]) == pytest.approx(z_v1, rel=1e-5)
    assert float(modules.z_teacher[...]) == pytest.approx(z_v2, rel=1e-5)
    np.testing.assert_allclose(modules.memory_student[...], memory_v1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(modules.memory_teacher[...], memory_v2, rtol=1e-5, atol=1e-6)
    assert int(modules.draws[...]) == step + 1


def test_z_and_the_banks_carry_no_gradient():
  """The gradient w.r.t. the student's features on the first batch (Z set from it) equals
  the one with that Z given as a constant (the reference's .item()); only the heads are
  parameters."""
  student, teacher = _outputs(np.random.default_rng(2))
  modules = _modules()
  idx = jnp.asarray(_drawn(modules, 6))
  banks = modules.memory_student[...], modules.memory_teacher[...]

  def nce(student_features, z_student, z_teacher):
    embeds = modules.embed(student_features, teacher.features["pooled"])
    return crd_lib.crd_nce(*embeds, *banks, idx, z_student, z_teacher, 0.07)

  @jax.jit
  def gradients(student_features):
    _, z_student, z_teacher = nce(student_features, -1.0, -1.0)
    first = jax.grad(lambda f: nce(f, -1.0, -1.0)[0])(student_features)
    fixed = jax.grad(lambda f: nce(f, z_student, z_teacher)[0])(student_features)
    return first, fixed, z_student, z_teacher

  first, fixed, z_student, z_teacher = gradients(student.features["pooled"])
  assert float(z_student) > 0 and float(z_teacher) > 0
  assert np.abs(fixed).max() > 0
  np.testing.assert_allclose(first, fixed, rtol=1e-5, atol=1e-7)
  assert set(nnx.state(modules, nnx.Param)) == {"embed_student", "embed_teacher"}


# --------------------------------------------------------------------------------- (b)


def _cls_negative(labels, num_classes):
  """mdistiller CIFAR100InstanceSample.__init__'s cls_negative, as it builds it."""
  cls_positive = [[] for _ in range(num_classes)]
  for i, label in enumerate(labels):
    cls_positive[label].append(i)
  cls_negative = [[] for _ in range(num_classes)]
  for i in range(num_classes):
    for j in range(num_classes):
      if j != i:
        cls_negative[i].extend(cls_positive[j])
  return [np.asarray(row) for row in cls_negative]


def test_feeders_give_the_training_labels_by_index(dataset):
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=16, eval_batch_size=16, data=dict(
      dataset="cifar10", source="synthetic")))
  feeder = feeders.DeviceFeeder(dataset, config, train.data_mesh())
  np.testing.assert_array_equal(feeder.train_labels(), dataset.train_labels)
  assert feeder.train_labels().dtype == np.int32
  records = [{"image": b"", "label": label} for label in (3, 1, 4, 1, 5)]
  host = types.SimpleNamespace(_train_records=records)  # what HostFeeder reads them from
  np.testing.assert_array_equal(feeders.HostFeeder.train_labels(host), [3, 1, 4, 1, 5])


def test_negatives_table_rows_are_mdistillers_cls_negative():
  table = jax.device_get(_table())
  for c, row in enumerate(_cls_negative(TRAIN_LABELS, NUM_CLASSES)):
    start, count = table["class_start"][c], table["class_count"][c]
    mine = [table["order"][j if j < start else j + count] for j in range(NUM_TRAIN - count)]
    np.testing.assert_array_equal(mine, row)


@pytest.mark.parametrize("k,always", [(5, False), (29, False), (33, False), (64, False),
                                      (29, True)])
def test_negatives_are_other_classes_after_the_example_itself(k, always):
  """k 5: a subset of distinct indices for every class; 29 and 33: with replacement
  exactly for the classes whose cls_negative is shorter than k (36, 34, 32, 30, 28 long);
  64: more than the split, with replacement for all; `always`: the ImageNet sampler."""
  draw = jax.jit(crd_lib.contrast_indices, static_argnums=(4, 5))
  table, seen, repeats = _table(), np.zeros(NUM_TRAIN), 0
  for number in range(30):
    idx = np.asarray(draw(jax.random.key(number), jnp.asarray(INDEX), jnp.asarray(LABELS),
                          table, k, always))
    assert idx.shape == (B, k + 1) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx[:, 0], INDEX)
    for row, label in zip(idx[:, 1:], LABELS):
      assert np.all(TRAIN_LABELS[row] != label) and np.all((row >= 0) & (row < NUM_TRAIN))
      others = NUM_TRAIN - np.sum(TRAIN_LABELS == label)
      if k <= others and not always:  # np.random.choice(..., replace=False)
        assert len(set(row.tolist())) == k
      repeats += len(set(row.tolist())) < k
    if number == 0:  # the same key draws the same indices
      np.testing.assert_array_equal(idx, draw(jax.random.key(0), jnp.asarray(INDEX),
                                              jnp.asarray(LABELS), table, k, always))
    np.add.at(seen, idx[:, 1:].ravel(), 1)
  assert (repeats > 0) == (always or k > 28)
  # Every example of another class is drawn (uniform over cls_negative, loosely).
  possible = np.isin(TRAIN_LABELS, [c for c in range(NUM_CLASSES) if np.any(LABELS != c)])
  assert np.all(seen[possible] > 0)


# --------------------------------------------------------------------------------- (c)


def test_memory_update_by_hand():
  bank = RNG.normal(size=(NUM_TRAIN, FEAT)).astype(np.float32)
  embed = RNG.normal(size=(B, FEAT)).astype(np.float32)
  updated = np.asarray(crd_lib.momentum_update(jnp.asarray(bank), jnp.asarray(INDEX),
                                               jnp.asarray(embed), 0.5))
  expected = bank.copy()
  for row, i in enumerate(INDEX):
    mixed = 0.5 * bank[i] + 0.5 * embed[row]
    expected[i] = mixed / np.linalg.norm(mixed)
  np.testing.assert_allclose(updated, expected, rtol=1e-6, atol=1e-7)


def test_extras_initialisation_as_contrast_memory():
  modules = crd_lib.CRDModules(64, 256, 128, 1000, nnx.Rngs(0))
  bound = 1 / np.sqrt(128 / 3)
  for bank in (modules.memory_student[...], modules.memory_teacher[...]):
    assert bank.shape == (1000, 128) and np.all(np.abs(bank) <= bound)
    assert np.abs(bank).max() > 0.99 * bound  # U(-bound, bound), not normalised
  assert not np.array_equal(modules.memory_student[...], modules.memory_teacher[...])
  assert float(modules.z_student[...]) < 0 and int(modules.draws[...]) == 0
  assert modules.embed_student.kernel.shape == (64, 128)
  assert np.abs(modules.embed_teacher.kernel[...]).max() <= 1 / 16  # PyTorch default


@pytest.mark.parametrize("field,value,message", [
    ("nce_m", 1.0, "config.method.nce_m=1.0 must be in \\[0, 1\\)"),
    ("nce_k", 0, "config.method.nce_k=0 must be > 0"),
    ("nce_t", 0.0, "config.method.nce_t=0.0 must be > 0"),
    ("crd_weight", -1.0, "config.method.crd_weight=-1.0 must be >= 0")])
def test_bad_fields_are_user_errors(field, value, message):
  with pytest.raises(UserError, match=message):
    _method(**{field: value})


# ---------------------------------------------------------------- extras of every pair


class _PooledWidths(Setup):
  """Setup whose feature shapes come from models.pooled_dim (test_models pins it to the
  models' real `pooled` features), so every pair builds in a second."""

  def feature_shapes(self, model):
    return {"pooled": jax.ShapeDtypeStruct((2, models.pooled_dim(model)), jnp.float32)}


def _pair_extras(method, teacher, student, setup_class, abstract):
  feeder = types.SimpleNamespace(info=types.SimpleNamespace(image_size=32, num_train=50_000))
  return nnx.eval_shape(lambda: method.extras(
      setup_class(abstract(student), abstract(teacher), feeder, nnx.Rngs(0))))


def _check_pair_extras(extras, teacher, student):
  assert extras.embed_student.kernel.shape == (models.pooled_dim(student), 128)
  assert extras.embed_teacher.kernel.shape == (models.pooled_dim(teacher), 128)
  assert extras.memory_student.shape == extras.memory_teacher.shape == (50_000, 128)


def test_extras_shapes_for_every_pair():
  """Heads d_s -> 128 and d_t -> 128, banks of the whole split, for every pair; one pair
  through the models' real (abstract) feature shapes."""
  method = methods.create(cifar_crd.get_config("res32x4_res8x4").method)
  for teacher, student in cifar_common.PAIRS.values():
    _check_pair_extras(_pair_extras(method, teacher, student, _PooledWidths, lambda n: n),
                       teacher, student)
  abstract = lambda n: nnx.eval_shape(lambda: models.create(n, 100, rngs=nnx.Rngs(0)))
  _check_pair_extras(_pair_extras(method, "resnet32x4", "resnet8x4", Setup, abstract),
                     "resnet32x4", "resnet8x4")


@pytest.mark.slow
def test_extras_shapes_for_every_pair_from_the_models():
  method = methods.create(cifar_crd.get_config("res32x4_res8x4").method)
  cache = {}

  def abstract(name):
    if name not in cache:
      cache[name] = nnx.eval_shape(lambda: models.create(name, 100, rngs=nnx.Rngs(0)))
    return cache[name]
  for teacher, student in cifar_common.PAIRS.values():
    _check_pair_extras(_pair_extras(method, teacher, student, Setup, abstract), teacher, student)


# -------------------------------------------------- train steps: (3), (d) 1 vs 8 devices


@pytest.fixture(scope="module")
def compiled():
  """Steps and evaluators built once per device count and reused by every Trainer of the
  tiny config (they are pure: state, data and frozen inputs are arguments, and jax.jit of
  the same function compiles once). Keeps the default suite fast."""
  return {}


@pytest.fixture()
def reuse_compiled(monkeypatch, compiled):
  make_step, evaluator = step_lib.make_train_step, evaluation.Evaluator

  def devices(feeder):
    return feeder.info, jax.tree.leaves(feeder.example_train_batch())[0].sharding.num_devices

  def memo_step(**kwargs):
    key = ("step", kwargs["method"], kwargs["teacher_def"] is None, devices(kwargs["feeder"]))
    if key not in compiled:
      compiled[key] = make_step(**kwargs)
    return compiled[key]

  def memo_evaluator(feeder, graphdef):
    key = ("eval", graphdef, devices(feeder))
    if key not in compiled:
      compiled[key] = evaluator(feeder, graphdef)
    return compiled[key]

  monkeypatch.setattr(step_lib, "make_train_step", memo_step)
  monkeypatch.setattr(evaluation, "Evaluator", memo_evaluator)


@pytest.fixture(scope="module")
def micro_teacher_dir(tmp_path_factory):
  """A saved micro CNN teacher (tests/micro_cnn.py), the model registered for the module:
  CRD's heads, banks and sampler across devices and resumes do not depend on the model,
  and a micro CNN's steps compile in a fraction of resnet8's time."""
  with micro_cnn.registered():
    yield micro_cnn.save_teacher(str(tmp_path_factory.mktemp("micro_teacher")))


def _tiny_config(teacher_dir):
  """CRD's smoke config on a micro CNN teacher (at `teacher_dir`) and student."""
  config = cifar_crd.get_config("smoke")
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      micro_cnn.NAME, teacher_dir, 0)
  config.student.model = micro_cnn.NAME
  config.data.synthetic_train_size, config.data.synthetic_test_size = 64, 32
  config.method.nce_k = 16
  config.batch_size, config.num_epochs = 16, 1
  config.eval_batch_size, config.log_every_steps = 32, 2
  return config


def _extras(tree):
  return tree["extras"]


def _value(leaf):
  """A variable's array, in a live state or in a checkpoint restored without a target."""
  return leaf["value"] if isinstance(leaf, dict) else leaf[...]


def test_two_steps_on_8_devices_equal_1_device_and_train_the_heads(dataset, micro_teacher_dir,
                                                                   reuse_compiled):
  """Loss terms, parameters (student and heads), banks, Z and the sampler state agree; the
  heads train, the banks change only at the batches' rows, the student has no extras."""
  config = _tiny_config(micro_teacher_dir)
  method = methods.create(config.method)
  teacher = checkpoint.load_teacher(micro_teacher_dir, micro_cnn.NAME, 10)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    student = train.create_student(config, 10)
    mesh = train.data_mesh(devices)
    feeder = feeders.DeviceFeeder(dataset, config, mesh)
    setup = Setup(student, teacher, feeder, nnx.Rngs(1))
    trainer = train.Trainer(config, feeder, student, teacher, method, mesh, method.extras(setup),
                            method.frozen(setup))
    before = jax.device_get((trainer.state.params, trainer.state.model_state))
    state, sums = trainer.train_step(trainer.state, trainer.init_metric_sums(), trainer.frozen,
                                     next(feeder.train_batches(0)))
    state, sums = trainer.train_step(state, sums, trainer.frozen, next(feeder.train_batches(0)))
    assert _extras(state.model_state)["memory_student"][...].sharding.is_fully_replicated
    trainer.state = state
    assert "extras" not in nnx.state(trainer.student())
    results.append(jax.device_get((sums, state.params, state.model_state)))
  (sums_1, params_1, stats_1), (sums_8, params_8, stats_8) = results
  assert set(sums_1) == set(sums_8) >= {"loss", "ce", "crd"}
  for key in sums_1:
    np.testing.assert_allclose(sums_8[key], sums_1[key], rtol=2e-5, atol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(params_1) + jax.tree.leaves(stats_1),
                  jax.tree.leaves(params_8) + jax.tree.leaves(stats_8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)

  params_0, stats_0 = before
  for head in ("embed_student", "embed_teacher"):
    assert not np.allclose(_extras(params_1)[head]["kernel"][...],
                           _extras(params_0)[head]["kernel"][...])
  seen = np.asarray(batching.epoch_permutation(config.seed, 0, 64))[:32]  # steps 1 and 2
  for bank in ("memory_student", "memory_teacher"):
    new, old = _extras(stats_1)[bank][...], _extras(stats_0)[bank][...]
    changed = np.flatnonzero(np.any(new != old, axis=1))
    np.testing.assert_array_equal(changed, np.sort(seen))
    np.testing.assert_allclose(np.linalg.norm(new[seen], axis=1), 1.0, rtol=1e-5)
  assert float(_extras(stats_1)["z_student"][...]) > 0 and int(_extras(stats_1)["draws"][...]) == 2


# ------------------------------------------------------------------ (e) exact resume


def _final_state(workdir):
  """The train state of the run's newest checkpoint, as saved (NumPy)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  manager.close()
  return jax.device_get(restored.state)


@pytest.mark.slow  # ~20 s of CPU even with the step compiled once: three runs, two evaluators
def test_stop_mid_epoch_and_resume_is_bit_identical_banks_included(
    tmp_path, dataset, micro_teacher_dir, reuse_compiled):
  """Stopped after step 3 of 4 (mid-epoch) and resumed: the same final parameters, banks,
  Z, sampler state and test accuracy as a straight run."""
  config = _tiny_config(micro_teacher_dir)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train.train_and_evaluate(config, straight, dataset).finished
  stopped = train.train_and_evaluate(config, resumed, dataset, max_steps=3)
  assert stopped.stopped_at == 3
  assert int(_value(_extras(_final_state(resumed)["model_state"])["draws"])) == 3
  assert train.train_and_evaluate(config, resumed, dataset).finished
  a, b = _final_state(straight), _final_state(resumed)
  assert int(a["step"]) == int(b["step"]) == 4
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert int(_value(_extras(b["model_state"])["draws"])) == 4
  assert ([r["top1"] for r in read_metrics(straight, "eval")]
          == [r["top1"] for r in read_metrics(resumed, "eval")])


# ------------------------------------------------------- recipe cards, published, main.py

# The RepDistiller README's CRD column (tables 1 and 2), written here by hand.
CRD_README = {("wrn_40_2", "wrn_16_2"): 75.48, ("wrn_40_2", "wrn_40_1"): 74.14,
              ("resnet56", "resnet20"): 71.16, ("resnet110", "resnet20"): 71.46,
              ("resnet110", "resnet32"): 73.48, ("resnet32x4", "resnet8x4"): 75.51,
              ("vgg13", "vgg8"): 73.94, ("vgg13", "MobileNetV2"): 69.73,
              ("ResNet50", "MobileNetV2"): 69.11, ("ResNet50", "vgg8"): 74.30,
              ("resnet32x4", "ShuffleV1"): 75.11, ("resnet32x4", "ShuffleV2"): 75.65,
              ("wrn_40_2", "ShuffleV1"): 76.05}


@pytest.mark.parametrize("pair", cifar_common.PAIRS)
def test_recipe_cards(pair):
  """mdistiller's CRD: CE 1.0 + FEAT_WEIGHT 0.8, K 16384, T 0.07, m 0.5, 128-d; METHODS.md 6."""
  teacher, student = cifar_common.PAIRS[pair]
  config = cifar_crd.get_config(pair)
  card = dict(recipe.card(config))
  assert card["loss"] == "1 CE + 0.8 CRD(K=16384, T=0.07)"
  assert card["lr"].startswith("0.01," if student in ("ShuffleV1", "ShuffleV2", "MobileNetV2")
                               else "0.05,")
  assert card["schedule"].startswith("240 epochs x 781 steps of batch 64 ")
  assert "momentum 0.5" in card["memory"]
  assert f"Linear({models.pooled_dim(student)} -> 128) student" in card["embed"]
  assert (config.method.feat_dim, config.method.nce_m, config.method.kd_weight) == (128, 0.5, 0.0)
  number = CRD_README.get((teacher, student))
  if number is None:
    assert "published" not in card
  else:
    source = published.SOURCES[("CRD", teacher, student)]
    assert card["published"] == f"CRD {number:.2f} ({source})" and "RepDistiller" in source
  config.method.kd_weight = 1.0
  assert published.published_method(config.method) == "CRD+KD"
  assert published.for_config(config.to_dict()) is None




@pytest.mark.slow
def test_smoke_config_runs_from_main(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "main.py", "--config=configs/cifar_crd.py:smoke",
                           f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2
