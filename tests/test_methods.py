"""Each method's total equals its METHODS.md formula assembled by hand from kd_jax.losses."""
import types

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax import data, losses, methods, models, train
from kd_jax.data import feeders
from kd_jax.methods import Aux, ModelOutput, Setup
from kd_jax.methods import nd as nd_lib
from kd_jax.methods.multi_view import MultiViewMethod
from tests import loss_reference as ref
from tests import micro_cnn

B, C, D = 8, 6, 5
RNG = np.random.default_rng(0)
LABELS = jnp.asarray(RNG.integers(0, C, B))


def _output(scale=2.0, dim=D):
  return ModelOutput(jnp.asarray(RNG.normal(size=(B, C)) * scale, jnp.float32),
                     {"pooled": jnp.asarray(np.abs(RNG.normal(size=(B, dim))), jnp.float32)})


STUDENT, TEACHER = _output(), _output()
STUDENT_STRONG, TEACHER_STRONG = _output(), _output()
MEANS = jnp.asarray(np.abs(RNG.normal(size=(C, D))), jnp.float32)


def _ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), np.asarray(labels)])


def _method(**fields):
  return methods.create(ml_collections.ConfigDict(fields))


def _total(method, epoch=0, student=STUDENT, teacher=TEACHER, aux=Aux(frozen={"class_means": MEANS})):
  total, metrics = method.loss(student, teacher, LABELS, jnp.asarray(epoch), aux)
  return float(total), metrics


def test_kd_and_logit_standardized_kd():
  total, _ = _total(_method(name="kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0))
  assert total == pytest.approx(0.1 * _ce(STUDENT.logits, LABELS)
                                + 0.9 * float(losses.kd(STUDENT.logits, TEACHER.logits, 4.0)), rel=1e-5)
  total, _ = _total(_method(name="kd", ce_weight=0.1, kd_weight=9.0, temperature=2.0, standardize=True))
  z = lambda x: (x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-7)
  expected = 0.1 * _ce(STUDENT.logits, LABELS) + 9.0 * float(
      losses.kd(z(np.asarray(STUDENT.logits)), z(np.asarray(TEACHER.logits)), 2.0))
  assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("epoch,warmup", [(0, 1 / 20), (4, 5 / 20), (19, 1.0), (100, 1.0)])
def test_dkd_warmup_counts_epochs_from_one(epoch, warmup):
  total, _ = _total(_method(name="dkd", alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20), epoch)
  dkd = float(losses.dkd(STUDENT.logits, TEACHER.logits, LABELS, 1.0, 8.0, 4.0))
  assert total == pytest.approx(_ce(STUDENT.logits, LABELS) + warmup * dkd, rel=1e-5)


def test_dist():
  total, _ = _total(_method(name="dist", beta=2.0, gamma=2.0, temperature=4.0))
  expected = _ce(STUDENT.logits, LABELS) + float(losses.dist(STUDENT.logits, TEACHER.logits, 2.0, 2.0, 4.0))
  assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cswt", [True, False])
def test_cskd_single_view(cswt):
  total, metrics = _total(_method(name="cskd", weight=2.0, temperature=4.0, cswt=cswt))
  expected = _ce(STUDENT.logits, LABELS) + 2 * float(losses.cskd(STUDENT.logits, TEACHER.logits, 4.0))
  if cswt:
    temps = losses.cswt_temperatures(STUDENT.logits, TEACHER.logits, 2.0, 6.0)
    expected += 2 * float(losses.cskd(STUDENT.logits, TEACHER.logits, temps))
    assert float(metrics["cswt_t_mean"]) == pytest.approx(float(temps.mean()))
  assert total == pytest.approx(expected, rel=1e-5)


def test_cskd_multi_view_matches_the_reference_assembly():
  method = _method(name="cskd_mv")
  total, metrics = _total(method, student=(STUDENT, STUDENT_STRONG), teacher=(TEACHER, TEACHER_STRONG))
  sw, ss, tw, ts = (np.asarray(x.logits) for x in (STUDENT, STUDENT_STRONG, TEACHER, TEACHER_STRONG))
  temps = losses.cswt_temperatures(sw, tw)  # from the weak view, reused for the strong one
  p = np.exp(tw - tw.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  confidence, class_confidence = p.max(1), p.sum(0)
  m = np.mean(confidence <= np.percentile(confidence, 50))
  c = np.mean(class_confidence <= np.percentile(class_confidence, 50))
  both = lambda fn, s, t: float(fn(s, t, 4.0)) + float(fn(s, t, temps))
  expected = (_ce(sw, LABELS) + _ce(ss, LABELS)
              + m * 2 * both(losses.cskd, sw, tw) + 2 * both(losses.cskd, ss, ts)
              + c * both(losses.class_correlation_distance, sw, tw)
              + m * both(losses.batch_correlation_distance, sw, tw))
  assert total == pytest.approx(expected, rel=1e-5)
  assert float(metrics["sample_mask"]) == pytest.approx(m)
  assert float(metrics["class_mask"]) == pytest.approx(c)


@pytest.mark.parametrize("standardize", [False, True])
def test_mlkd_matches_the_hand_assembly(standardize):
  """kd_jax/methods/mlkd.py's formula from the float64 NumPy references: five temperatures,
  the 'strong' sum's T = 2 and 6 on the weak view, CC/BC on raw logits, LS on KD only."""
  temperature, weight = (2.0, 9.0) if standardize else (4.0, 0.9)
  method = _method(name="mlkd", ce_weight=0.1, kd_weight=weight, temperature=temperature,
                   standardize=standardize)
  total, metrics = _total(method, student=(STUDENT, STUDENT_STRONG), teacher=(TEACHER, TEACHER_STRONG))
  sw, ss, tw, ts = (np.asarray(x.logits) for x in (STUDENT, STUDENT_STRONG, TEACHER, TEACHER_STRONG))
  z = ref.logit_standardize if standardize else (lambda x: x)
  p = ref.softmax(tw)
  m = np.mean(p.max(1) <= np.percentile(p.max(1), 50))
  c = np.mean(p.sum(0) <= np.percentile(p.sum(0), 50))
  temps = (temperature, 3.0, 5.0, 2.0, 6.0)
  expected = {
      "ce": 0.1 * (_ce(sw, LABELS) + _ce(ss, LABELS)),
      "kd_weak": m * weight * sum(ref.kd(z(sw), z(tw), t) for t in temps),
      "kd_strong": weight * (ref.kd(z(ss), z(ts), temperature) + ref.kd(z(ss), z(ts), 3.0)
                             + ref.kd(z(ss), z(ts), 5.0) + ref.kd(z(sw), z(tw), 2.0)
                             + ref.kd(z(sw), z(tw), 6.0)),
      "cc_weak": c * weight * sum(ref.consistency(sw, tw, t, True) for t in temps),
      "bc_weak": m * weight * sum(ref.consistency(sw, tw, t, False) for t in temps),
  }
  for name, value in expected.items():
    assert float(metrics[name]) == pytest.approx(value, rel=1e-5), name
  assert total == pytest.approx(sum(expected.values()), rel=1e-5)
  assert float(metrics["sample_mask"]) == pytest.approx(m)
  assert float(metrics["class_mask"]) == pytest.approx(c)


def test_mlkd_and_cskd_mv_share_one_multi_view_pipeline():
  """Views (and their recipe-card text) come from methods/multi_view.py for both."""
  for name in ("mlkd", "cskd_mv"):
    cls = methods.METHODS[name]
    assert issubclass(cls, MultiViewMethod) and cls.num_views == 2
    assert cls.views is MultiViewMethod.views and cls.describe_views is MultiViewMethod.describe_views


@pytest.mark.parametrize("epoch", [0, 10, 30])
def test_kd_plus_plus_and_dkd_plus_plus_warm_up_from_epoch_zero(epoch):
  warmup = min(1.0, epoch / 20)
  nd = float(losses.nd(STUDENT.features["pooled"], TEACHER.features["pooled"], MEANS, LABELS))
  total, _ = _total(_method(name="kd_nd", kd_weight=3.5, nd_weight=2.0), epoch)
  kd = float(losses.kd(STUDENT.logits, TEACHER.logits, 4.0))
  assert total == pytest.approx(_ce(STUDENT.logits, LABELS) + warmup * 3.5 * kd + 2.0 * nd, rel=1e-5)
  total, _ = _total(_method(name="dkd_nd", alpha=2.0, beta=8.0, nd_weight=0.5), epoch)
  dkd = float(losses.dkd(STUDENT.logits, TEACHER.logits, LABELS, 2.0, 8.0, 4.0))
  assert total == pytest.approx(_ce(STUDENT.logits, LABELS) + warmup * dkd + 0.5 * nd, rel=1e-5)


def test_cskd_nd_adds_the_nd_term():
  total, _ = _total(_method(name="cskd_nd", nd_weight=1.5))
  base, _ = _total(_method(name="cskd"))
  nd = float(losses.nd(STUDENT.features["pooled"], TEACHER.features["pooled"], MEANS, LABELS))
  assert total == pytest.approx(base + 1.5 * nd, rel=1e-5)


def test_nd_projection_head_only_when_widths_differ():
  method = _method(name="kd_nd", nd_weight=2.0)
  feeder = types.SimpleNamespace(info=types.SimpleNamespace(image_size=32))
  resnet8, resnet8x4 = (nnx.eval_shape(lambda n=name: models.create(n, 10, rngs=nnx.Rngs(0)))
                        for name in ("resnet8", "resnet8x4"))  # widths only: traced
  assert method.extras(Setup(resnet8, resnet8, feeder, nnx.Rngs(0))) is None
  wide = method.extras(Setup(resnet8, resnet8x4, feeder, nnx.Rngs(0)))
  assert wide.linear.kernel.shape == (64, 256)
  head = nd_lib.ProjectionHead(D, 7, nnx.Rngs(0), method.head_init)
  same_head = nnx.clone(head)  # same weights, BatchNorm state and dropout RNG
  teacher = ModelOutput(TEACHER.logits, {"pooled": jnp.asarray(np.abs(RNG.normal(size=(B, 7))))})
  means = jnp.asarray(np.abs(RNG.normal(size=(C, 7))), jnp.float32)
  total, _ = _total(method, teacher=teacher, aux=Aux(head, {"class_means": means}))  # epoch 0: KD weight 0
  projected = same_head(STUDENT.features["pooled"], train=True)
  assert projected.shape == (B, 7)
  nd = float(losses.nd(projected, teacher.features["pooled"], means, LABELS))
  assert total == pytest.approx(_ce(STUDENT.logits, LABELS) + 2.0 * nd, rel=1e-5)


def test_teacher_class_means_equal_numpy_per_class_means():
  """The class-mean pass (8 devices, padded batches) vs NumPy over the same features, of
  a micro CNN teacher (tests/micro_cnn.py: the pass does not depend on the model)."""
  dataset = data.load("cifar10", "synthetic", synthetic_train_size=40, synthetic_test_size=8)
  teacher = micro_cnn.MicroCNN(10, rngs=nnx.Rngs(3))
  config = ml_collections.ConfigDict(dict(seed=5, batch_size=16, eval_batch_size=16, data=dict(
      dataset="cifar10", source="synthetic")))
  means = nd_lib.teacher_class_means(teacher, feeders.DeviceFeeder(dataset, config, train.data_mesh()))
  key = jax.random.fold_in(jax.random.key(5), 0xC1A55)
  features, labels = [], []
  for number, (index, valid) in enumerate(data.eval_batches(40, 16)):
    images = data.augment.random_crop_flip(jax.random.fold_in(key, number),
                                           dataset.train_images[index])
    images = data.normalize(images, jnp.asarray(dataset.mean), jnp.asarray(dataset.std))
    pooled = np.asarray(teacher(images, train=False)[1]["pooled"])
    features.append(pooled[valid])
    labels.append(dataset.train_labels[index][valid])
  features, labels = np.concatenate(features), np.concatenate(labels)
  assert len(labels) == 40
  expected = np.stack([features[labels == c].mean(0) if np.any(labels == c) else np.zeros(features.shape[1])
                       for c in range(10)])
  np.testing.assert_allclose(means, expected, rtol=1e-4, atol=1e-5)
