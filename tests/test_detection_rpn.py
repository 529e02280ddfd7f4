"""RPN anchor labelling and losses (kd_jax/detection/rpn.py) against NumPy transcriptions
of detectron2's rpn.py (tests/detection_numpy_reference.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.detection import anchors as anchor_lib
from kd_jax.detection import rpn
from tests import detection_numpy_reference as ref

# anchors of a 64x64 input: p2..p6 of 16x16 .. 1x1 (1023 anchors)
ANCHORS = np.concatenate(anchor_lib.all_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]))


_LABEL_FN = jax.jit(lambda k, b, v: rpn.label_and_sample_anchors(
    k, jnp.asarray(ANCHORS), b, v, batch_size_per_image=64))


def _gt(rng, count, pad):
  xy = rng.uniform(0, 40, (count, 2))
  wh = rng.uniform(8, 30, (count, 2))
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  padded = np.concatenate([boxes, np.zeros((pad, 4), np.float32)])
  return boxes, padded, np.arange(count + pad) < count


@pytest.mark.parametrize('count', [0, 1, 4])
def test_label_and_sample_anchors_matches_detectron2(count):
  rng = np.random.default_rng(count)
  boxes, padded, valid = _gt(rng, count, pad=6 - count)
  expected_labels, expected_matched = ref.anchor_labels(ANCHORS, boxes)
  labels, matched = map(np.asarray, _LABEL_FN(jax.random.key(count), padded, valid))
  pos, neg = labels == 1, labels == 0
  # sampled subsets of detectron2's positives / negatives, of subsample_labels' sizes
  assert np.all(expected_labels[pos] == 1) and np.all(expected_labels[neg] == 0)
  num_pos = min(np.sum(expected_labels == 1), 32)
  assert pos.sum() == num_pos
  assert neg.sum() == min(np.sum(expected_labels == 0), 64 - num_pos)
  assert np.all(labels[~(pos | neg)] == -1)
  np.testing.assert_array_equal(matched[pos], expected_matched[pos])
  if count:
    assert pos.sum() >= count  # low-quality matches give every ground truth an anchor


def test_rpn_losses_match_detectron2():
  rng = np.random.default_rng(0)
  batch, n = 2, len(ANCHORS)
  logits = rng.normal(0, 2, (batch, n)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (batch, n, 4)).astype(np.float32)
  labels = rng.choice([-1, 0, 1], (batch, n), p=[0.8, 0.15, 0.05]).astype(np.int32)
  centers = (ANCHORS[:, :2] + ANCHORS[:, 2:]) / 2
  sides = (ANCHORS[:, 2:] - ANCHORS[:, :2]) * rng.uniform(0.7, 1.3, (batch, n, 2))
  shift = rng.normal(0, 3, (batch, n, 2))
  matched = np.concatenate([centers + shift - sides / 2, centers + shift + sides / 2],
                           axis=-1).astype(np.float32)
  # anchors that are not positive may have matched a padding box: must not leak
  matched[labels != 1] = 0.0
  got = rpn.rpn_losses(jnp.asarray(ANCHORS), logits, deltas, labels, matched)
  expected = ref.rpn_losses(ANCHORS, logits, deltas, labels, matched)
  for name in expected:
    assert np.isfinite(expected[name]) and expected[name] > 0, name
    np.testing.assert_allclose(float(got[name]), expected[name], rtol=1e-5, err_msg=name)
  grads = jax.grad(lambda d: rpn.rpn_losses(jnp.asarray(ANCHORS), logits, d, labels,
                                            matched)['loss_rpn_loc'])(deltas)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[labels != 1] == 0)
