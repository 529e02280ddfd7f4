"""RoI distillation losses (kd_jax/losses/roi.py, METHODS.md 13) against PyTorch
transcriptions of the ND authors' Detection/model/utils.py and reviewkd.py: value and
gradient on padded RoIs equal the authors' on the valid RoIs alone, the background class
included; HCL over five FPN-shaped (non-square) levels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kd_jax import losses
from tests import detection_kd_reference as ref

NUM_CLASSES = 80  # foreground; K = 80 is the background label, 81 logits
RNG = np.random.default_rng(0)


def _rois(count=24, padded=6, dim=16):
  """Box-head features, logits and labels of `count` RoIs, the last `padded` padding.

  Row 0 is a background RoI whose teacher norm ties the student's; rows 1-2 are
  background too; padding carries label -1 and large values (they must not count)."""
  valid = np.arange(count) < count - padded
  labels = RNG.integers(0, NUM_CLASSES, size=count)
  labels[:3] = NUM_CLASSES
  labels[~valid] = -1
  student = np.maximum(RNG.normal(size=(count, dim)), 0.0)
  teacher = np.maximum(RNG.normal(size=(count, dim)) * 1.3, 0.0)
  # The same norm, exact in any summation order: the tie goes to the student (Python's max).
  student[0] = RNG.choice([0.0, 0.5, 1.0, 2.0], size=dim)
  teacher[0] = student[0][::-1]
  student[~valid] *= 1e3
  centers = np.abs(RNG.normal(size=(NUM_CLASSES + 1, dim)))
  logits_s = RNG.normal(size=(count, NUM_CLASSES + 1)) * 3
  logits_t = RNG.normal(size=(count, NUM_CLASSES + 1)) * 3
  logits_s[~valid] = 1e4
  return dict(student=student, teacher=teacher, centers=centers, labels=labels, valid=valid,
              logits_s=logits_s, logits_t=logits_t)


def _torch_value_and_grad(fn, student, *rest):
  student = torch.tensor(student, dtype=torch.float64, requires_grad=True)
  value = fn(student, *[torch.tensor(x) for x in rest])
  value.backward()
  return float(value.detach()), student.grad.numpy()


def _check_grad(grad, expected, valid):
  np.testing.assert_allclose(np.asarray(grad)[valid], expected, rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad)[~valid], 0.0)


def test_roi_nd_matches_direct_norm_loss_on_the_valid_rois():
  r = _rois()
  v = r["valid"]
  expected, expected_grad = _torch_value_and_grad(
      lambda s, t, c, y: ref.direct_norm_loss(s, t, c, y),
      r["student"][v], r["teacher"][v], r["centers"], r["labels"][v])
  fn = lambda s: losses.roi_nd(s, r["teacher"], r["centers"], r["labels"], r["valid"])
  value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(r["student"], jnp.float32))
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  _check_grad(grad, expected_grad, v)


def test_roi_kd_matches_kd_loss_batchmean_on_the_valid_rois():
  r = _rois()
  v = r["valid"]
  for temperature in (1.0, 2.0):
    expected, expected_grad = _torch_value_and_grad(
        lambda s, t: ref.kd_loss(s, t, temperature=temperature),
        r["logits_s"][v], r["logits_t"][v])
    fn = lambda s: losses.roi_kd(s, r["logits_t"], r["valid"], temperature)
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(r["logits_s"], jnp.float32))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    _check_grad(grad, expected_grad, v)


def test_roi_dkd_matches_dkd_loss_on_the_valid_rois_background_included():
  r = _rois()
  v = r["valid"]
  for alpha, beta, temperature in ((1.0, 0.25, 1.0), (0.5, 2.0, 2.0)):
    expected, expected_grad = _torch_value_and_grad(
        lambda s, t, y: ref.dkd_loss(s, t, y, alpha, beta, temperature),
        r["logits_s"][v], r["logits_t"][v], r["labels"][v])
    fn = lambda s: losses.roi_dkd(s, r["logits_t"], r["labels"], r["valid"], alpha, beta,
                                  temperature)
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(r["logits_s"], jnp.float32))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    _check_grad(grad, expected_grad, v)


def test_roi_losses_are_zero_for_a_student_equal_to_its_teacher_and_ignore_the_teacher_grad():
  r = _rois()
  logits = jnp.asarray(r["logits_t"], jnp.float32)
  kd, dkd = jax.jit(lambda z: (losses.roi_kd(z, z, r["valid"]),
                               losses.roi_dkd(z, z, r["labels"], r["valid"])))(logits)
  assert abs(float(kd)) < 1e-6 and abs(float(dkd)) < 1e-6
  teacher_grad = jax.jit(jax.grad(lambda t: losses.roi_nd(r["student"], t, r["centers"], r["labels"],
                                                  r["valid"])))(jnp.asarray(r["teacher"]))
  np.testing.assert_array_equal(teacher_grad, 0.0)


def test_roi_losses_with_no_valid_roi_are_zero_and_finite():
  r = _rois()
  none = np.zeros_like(r["valid"])
  values = jax.jit(lambda r: [
      losses.roi_nd(r["student"], r["teacher"], r["centers"], r["labels"], none),
      losses.roi_kd(r["logits_s"], r["logits_t"], none),
      losses.roi_dkd(r["logits_s"], r["logits_t"], r["labels"], none)])(r)
  np.testing.assert_array_equal(values, 0.0)


@pytest.mark.parametrize("sizes", [((16, 24), (8, 12), (4, 6), (2, 3), (1, 2))])
def test_hcl_on_fpn_levels_matches_the_authors_hcl(sizes):
  """Five non-square levels (p2..p6 of a 64x96 input), the 4/2/1 pyramid skipped by the
  student's height as the authors do."""
  maps_s = [RNG.normal(size=(2, h, w, 8)) for h, w in sizes]
  maps_t = [RNG.normal(size=(2, h, w, 8)) for h, w in sizes]
  nchw = lambda x: torch.tensor(np.transpose(x, (0, 3, 1, 2)))
  expected = ref.hcl([nchw(x) for x in maps_s], [nchw(x) for x in maps_t])
  value = jax.jit(losses.hcl)([jnp.asarray(x, jnp.float32) for x in maps_s],
                              [jnp.asarray(x, jnp.float32) for x in maps_t])
  np.testing.assert_allclose(value, float(expected), rtol=1e-5)
