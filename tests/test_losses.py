"""kd_jax.losses against independent NumPy formulations, hand values, gradients and edge cases."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses
from tests import loss_reference as ref

B, C = 6, 5


def _logits(seed, shape=(B, C), scale=2.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


STUDENT, TEACHER = _logits(0), _logits(1)
LABELS = np.array([0, 1, 2, 3, 4, 0])
PER_SAMPLE_T = np.array([2.0, 3.0, 4.5, 6.0, 2.5, 5.0], np.float32)

# name -> (kd_jax function of (student, teacher), reference of (student, teacher)).
CASES = {
    "kd_T4": (losses.kd, ref.kd),
    "kd_T1": (functools.partial(losses.kd, temperature=1.0), functools.partial(ref.kd, T=1.0)),
    "dkd": (lambda s, t: losses.dkd(s, t, LABELS), lambda s, t: ref.dkd(s, t, LABELS)),
    "dkd_tckd_only": (lambda s, t: losses.dkd(s, t, LABELS, alpha=1.0, beta=0.0, temperature=2.0),
                      lambda s, t: ref.dkd(s, t, LABELS, 1.0, 0.0, 2.0)),
    "dkd_nckd_only": (lambda s, t: losses.dkd(s, t, LABELS, alpha=0.0, beta=1.0, temperature=1.0),
                      lambda s, t: ref.dkd(s, t, LABELS, 0.0, 1.0, 1.0)),
    "cskd_T4": (losses.cskd, lambda s, t: ref.cskd(s, t, 4.0)),
    "cskd_per_sample": (lambda s, t: losses.cskd(s, t, PER_SAMPLE_T),
                        lambda s, t: ref.cskd(s, t, PER_SAMPLE_T)),
    "cc": (lambda s, t: losses.class_correlation_distance(s, t, 4.0),
           lambda s, t: ref.gram_distance(s, t, 4.0, over_classes=True)),
    "cc_per_sample": (lambda s, t: losses.class_correlation_distance(s, t, PER_SAMPLE_T),
                      lambda s, t: ref.gram_distance(s, t, PER_SAMPLE_T, over_classes=True)),
    "bc": (lambda s, t: losses.batch_correlation_distance(s, t, 2.0),
           lambda s, t: ref.gram_distance(s, t, 2.0, over_classes=False)),
    "class_consistency": (lambda s, t: losses.class_consistency(s, t, 4.0),
                          lambda s, t: ref.consistency(s, t, 4.0, over_classes=True)),
    "batch_consistency": (lambda s, t: losses.batch_consistency(s, t, 3.0),
                          lambda s, t: ref.consistency(s, t, 3.0, over_classes=False)),
    "dist": (losses.dist, ref.dist),
    "dist_T4": (lambda s, t: losses.dist(s, t, beta=2.0, gamma=0.5, temperature=4.0),
                lambda s, t: ref.dist(s, t, 2.0, 0.5, 4.0)),
    "ls_kd": (lambda s, t: losses.kd(losses.logit_standardize(s), losses.logit_standardize(t), 2.0),
              lambda s, t: ref.kd(ref.logit_standardize(s), ref.logit_standardize(t), 2.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_reference(name):
  fn, reference = CASES[name]
  np.testing.assert_allclose(fn(STUDENT, TEACHER), reference(STUDENT, TEACHER), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences_of_reference(name):
  """jax.grad w.r.t. the student vs central differences of the float64 reference."""
  fn, reference = CASES[name]
  grad = np.asarray(jax.grad(lambda s: fn(s, TEACHER))(jnp.asarray(STUDENT)))
  student = STUDENT.astype(np.float64)
  expected = np.zeros_like(student)
  h = 1e-5
  for index in np.ndindex(student.shape):
    plus, minus = student.copy(), student.copy()
    plus[index] += h
    minus[index] -= h
    expected[index] = (reference(plus, TEACHER) - reference(minus, TEACHER)) / (2 * h)
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=2e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_teacher_gets_no_gradient(name):
  fn, _ = CASES[name]
  grad = jax.grad(lambda t: fn(STUDENT, t))(jnp.asarray(TEACHER))
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("name", ["kd_T4", "dkd", "cskd_T4", "cskd_per_sample", "cc", "bc", "dist", "ls_kd",
                                  "class_consistency", "batch_consistency"])
def test_zero_when_student_equals_teacher(name):
  fn, _ = CASES[name]
  value = fn(TEACHER, TEACHER)
  assert abs(float(value)) < 1e-5
  assert np.all(np.isfinite(jax.grad(lambda s: fn(s, TEACHER))(jnp.asarray(TEACHER))))


def test_kd_by_hand():
  """Two classes, T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2)."""
  value = losses.kd(np.array([[0.0, 0.0]]), np.array([[np.log(3.0), 0.0]]), temperature=1.0)
  np.testing.assert_allclose(value, 0.75 * np.log(1.5) + 0.25 * np.log(0.5), rtol=1e-6)
  # T^2 scaling: the same probabilities at T = 2 come from doubled logits.
  doubled = losses.kd(np.array([[0.0, 0.0]]), np.array([[2 * np.log(3.0), 0.0]]), temperature=2.0)
  np.testing.assert_allclose(doubled, 4 * value, rtol=1e-6)


def test_dkd_by_hand():
  """Three classes, label 0, T = 1, teacher p = (1/2, 3/8, 1/8), student uniform."""
  teacher = np.log(np.array([[4.0, 3.0, 1.0]]))
  student = np.zeros((1, 3))
  tckd = 0.5 * np.log(0.5 / (1 / 3)) + 0.5 * np.log(0.5 / (2 / 3))
  nckd = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
  value = losses.dkd(student, teacher, np.array([0]), alpha=1.0, beta=8.0, temperature=1.0)
  np.testing.assert_allclose(value, tckd + 8 * nckd, rtol=1e-5)


def test_cskd_by_hand():
  """Two samples, two classes, T = 1; columns of P compared by cosine."""
  p_t = np.array([[0.5, 0.5], [0.9, 0.1]])
  p_s = np.array([[0.2, 0.8], [0.6, 0.4]])
  cos = [abs(p_s[:, j] @ p_t[:, j]) / (np.linalg.norm(p_s[:, j]) * np.linalg.norm(p_t[:, j]))
         for j in range(2)]
  value = losses.cskd(np.log(p_s), np.log(p_t), temperature=1.0)
  np.testing.assert_allclose(value, 1 - np.mean(cos), rtol=1e-5)


def test_cskd_is_invariant_to_batch_order_and_column_scale():
  perm = np.random.default_rng(3).permutation(B)
  np.testing.assert_allclose(losses.cskd(STUDENT[perm], TEACHER[perm]), losses.cskd(STUDENT, TEACHER),
                             rtol=1e-6)
  # Scale invariance per class column: duplicating the batch scales each column's norm
  # by sqrt(2) and leaves the cosine unchanged.
  np.testing.assert_allclose(
      losses.cskd(np.concatenate([STUDENT, STUDENT]), np.concatenate([TEACHER, TEACHER])),
      losses.cskd(STUDENT, TEACHER), rtol=1e-5)


def test_cswt_temperatures_match_reference_and_span_the_range():
  temps = np.asarray(losses.cswt_temperatures(STUDENT, TEACHER))
  np.testing.assert_allclose(temps, ref.cswt(STUDENT, TEACHER), rtol=1e-5)
  similarity = [ref.abs_cos(a, b) for a, b in zip(ref.softmax(STUDENT), ref.softmax(TEACHER))]
  assert temps[np.argmax(similarity)] == pytest.approx(2.0)
  assert temps[np.argmin(similarity)] == pytest.approx(6.0)
  custom = losses.cswt_temperatures(STUDENT, TEACHER, t_low=1.0, t_high=3.0)
  assert float(custom.min()) == pytest.approx(1.0) and float(custom.max()) == pytest.approx(3.0)


@pytest.mark.parametrize("student,teacher", [
    (np.zeros((4, C)), np.zeros((4, C))),  # all-equal rows: every c_i = 1
    (STUDENT[:1], TEACHER[:1]),  # batch of one
    (TEACHER, TEACHER),  # identical
])
def test_cswt_degenerate_batches_get_the_middle_temperature(student, teacher):
  temps = losses.cswt_temperatures(student, teacher)
  np.testing.assert_allclose(temps, 4.0, rtol=1e-6)


def test_cswt_has_no_gradient():
  grad = jax.grad(lambda s: jnp.sum(losses.cswt_temperatures(s, TEACHER)))(jnp.asarray(STUDENT))
  np.testing.assert_array_equal(grad, 0.0)


def _features(seed, n=B, d=7):
  return np.abs(np.random.default_rng(seed).normal(size=(n, d))).astype(np.float32)


def test_nd_matches_reference_and_gradient():
  fs, ft, means = _features(10), _features(11) * 1.3, _features(12, n=C)
  np.testing.assert_allclose(losses.nd(fs, ft, means, LABELS), ref.nd(fs, ft, means, LABELS), rtol=1e-5)
  grad = np.asarray(jax.grad(lambda f: losses.nd(f, ft, means, LABELS))(jnp.asarray(fs)))
  expected = np.zeros_like(fs, dtype=np.float64)
  h = 1e-5
  for index in np.ndindex(fs.shape):
    plus, minus = fs.astype(np.float64), fs.astype(np.float64)
    plus[index] += h
    minus[index] -= h
    expected[index] = (ref.nd(plus, ft, means, LABELS) - ref.nd(minus, ft, means, LABELS)) / (2 * h)
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)
  assert np.all(np.asarray(jax.grad(lambda f: losses.nd(fs, f, means, LABELS))(jnp.asarray(ft))) == 0)


def test_nd_rewards_norm_beyond_the_teacher_and_takes_student_norm_on_ties():
  means = np.eye(2, dtype=np.float32)
  labels = np.array([0])
  teacher = np.array([[2.0, 0.0]], np.float32)
  # Aligned student at half the teacher norm: 1 - 1/2; at the teacher's norm or more: 0.
  assert float(losses.nd(np.array([[1.0, 0.0]]), teacher, means, labels)) == pytest.approx(0.5)
  assert float(losses.nd(np.array([[3.0, 0.0]]), teacher, means, labels)) == pytest.approx(0.0)
  # Tie |f_s| = |f_t|: the max is the student's norm, so the gradient is that of
  # 1 - <f_s, e>/|f_s| (a function of direction only, orthogonal to f_s).
  student = jnp.array([[1.2, 1.6]])
  grad = jax.grad(lambda f: losses.nd(f, teacher, means, labels))(student)
  expected = jax.grad(lambda f: 1 - f[0, 0] / jnp.linalg.norm(f))(student)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_class_means_match_numpy_and_accumulate_over_batches():
  features, labels = _features(20, n=12, d=3), np.array([0, 1, 1, 3, 3, 3, 0, 1, 3, 3, 0, 0])
  expected = np.stack([features[labels == c].mean(0) if np.any(labels == c) else np.zeros(3)
                       for c in range(5)])
  np.testing.assert_allclose(losses.class_means(features, labels, 5), expected, rtol=1e-6)
  sums, counts = map(sum, zip(*(losses.class_sums(features[i:i + 4], labels[i:i + 4], 5)
                                for i in range(0, 12, 4))))
  np.testing.assert_allclose(sums / np.maximum(counts, 1)[:, None], expected, rtol=1e-6)


def test_logit_standardize_matches_numpy_and_handles_constant_rows():
  np.testing.assert_allclose(losses.logit_standardize(STUDENT), ref.logit_standardize(STUDENT),
                             rtol=1e-5, atol=1e-6)
  constant = jnp.full((2, C), 3.0)
  np.testing.assert_array_equal(losses.logit_standardize(constant), 0.0)
  grad = jax.grad(lambda z: jnp.sum(losses.logit_standardize(z) ** 2))(constant)
  assert np.all(np.isfinite(grad))


# ---------------------------------------------------------------- robustness (METHODS.md 1)

EXTREME_STUDENT = np.array([[1e4, -1e4, 0.0, 5.0, -3.0], [-1e4, 1e4, 1e4, 0.0, 2.0]], np.float32)
EXTREME_TEACHER = np.array([[-1e4, 1e4, 0.0, 0.0, 1.0], [1e4, -1e4, 3.0, 1e4, 0.0]], np.float32)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("inputs", ["extreme", "bfloat16", "batch_of_one", "unpredicted_class",
                                    "constant_rows"])
def test_finite_value_and_gradient(name, inputs):
  fn, reference = CASES[name]
  if name.startswith(("dkd", "cskd_per", "cc_per")) and inputs in ("extreme", "batch_of_one"):
    n = 2 if inputs == "extreme" else 1
    fn = {  # rebuild the batch-size-dependent cases for the smaller batch
        "dkd": lambda s, t: losses.dkd(s, t, LABELS[:n]),
        "dkd_tckd_only": lambda s, t: losses.dkd(s, t, LABELS[:n], 1.0, 0.0, 2.0),
        "dkd_nckd_only": lambda s, t: losses.dkd(s, t, LABELS[:n], 0.0, 1.0, 1.0),
        "cskd_per_sample": lambda s, t: losses.cskd(s, t, PER_SAMPLE_T[:n]),
        "cc_per_sample": lambda s, t: losses.class_correlation_distance(s, t, PER_SAMPLE_T[:n]),
    }[name]
    reference = None
  student, teacher = {
      "extreme": (EXTREME_STUDENT, EXTREME_TEACHER),
      "bfloat16": (jnp.asarray(STUDENT, jnp.bfloat16), jnp.asarray(TEACHER, jnp.bfloat16)),
      "batch_of_one": (STUDENT[:1], TEACHER[:1]),
      # Class 4 is never predicted: its probability underflows to 0 in every row.
      "unpredicted_class": (np.concatenate([STUDENT[:, :4], np.full((B, 1), -1e4, np.float32)], 1),
                            np.concatenate([TEACHER[:, :4], np.full((B, 1), -1e4, np.float32)], 1)),
      "constant_rows": (np.zeros((B, C), np.float32), np.ones((B, C), np.float32)),
  }[inputs]
  value, grad = jax.value_and_grad(lambda s: fn(s, teacher))(jnp.asarray(student))
  assert value.dtype == jnp.float32
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
  if inputs == "bfloat16":  # bf16 inputs are upcast: same value as the float32 of those inputs
    np.testing.assert_allclose(value, fn(np.asarray(student, np.float32), np.asarray(teacher, np.float32)),
                               rtol=1e-6)
  if inputs in ("extreme", "unpredicted_class") and reference is not None and not name.startswith("ls_"):
    np.testing.assert_allclose(value, reference(student, teacher), rtol=1e-4, atol=1e-5)


def test_nd_and_class_means_robustness():
  zeros = jnp.zeros((B, 7))
  means = _features(12, n=C)
  value, grad = jax.value_and_grad(lambda f: losses.nd(f, zeros, means, LABELS))(zeros)
  assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
  bf16 = jnp.asarray(_features(10), jnp.bfloat16)
  assert np.isfinite(float(losses.nd(bf16, bf16, means, LABELS)))
  assert losses.nd(_features(10)[:1], _features(11)[:1], means, LABELS[:1]).shape == ()
  np.testing.assert_array_equal(losses.class_means(zeros, LABELS, 7)[5:], 0.0)  # unseen classes


# ---------------------------------------------------------------- global batch on 8 devices


def test_batch_losses_on_8_sharded_devices_equal_the_definition():
  """CSKD, CSWT, DIST and class means are batch-level: sharding must not change them."""
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  student, teacher = _logits(30, (16, 10)), _logits(31, (16, 10))
  labels = np.arange(16) % 10
  s, t, y = (jax.device_put(x, sharded) for x in (student, teacher, labels))

  def everything(s, t, y):
    temps = losses.cswt_temperatures(s, t)
    return (losses.cskd(s, t, 4.0), losses.cskd(s, t, temps), temps, losses.dist(s, t),
            jax.grad(lambda s: losses.cskd(s, t, temps))(s), losses.class_means(s, y, 10))

  sharded_out = jax.jit(everything)(s, t, y)
  assert sharded_out[4].sharding.spec == jax.sharding.PartitionSpec("data")
  temps = ref.cswt(student, teacher)
  np.testing.assert_allclose(sharded_out[0], ref.cskd(student, teacher, 4.0), rtol=1e-5)
  np.testing.assert_allclose(sharded_out[1], ref.cskd(student, teacher, temps), rtol=1e-5)
  np.testing.assert_allclose(sharded_out[2], temps, rtol=1e-5)
  np.testing.assert_allclose(sharded_out[3], ref.dist(student, teacher), rtol=1e-5)
  single = jax.jit(everything, device=None)(*(jax.device_put(x, devices[0])
                                               for x in (student, teacher, labels)))
  for a, b in zip(sharded_out, single):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
