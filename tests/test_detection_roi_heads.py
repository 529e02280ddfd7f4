"""ROI-head sampling (roi_heads.py) and the Fast R-CNN losses (fast_rcnn.py) against
NumPy transcriptions of detectron2's roi_heads.py / fast_rcnn.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.detection import fast_rcnn
from tests import detection_numpy_reference as ref

NUM_CLASSES = 5


def _boxes(rng, count, low=2.0, high=40.0):
  xy = rng.uniform(0, 50, (count, 2))
  wh = rng.uniform(low, high, (count, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_fast_rcnn_losses_match_detectron2():
  rng = np.random.default_rng(0)
  count = 24
  scores = rng.normal(0, 2, (count, NUM_CLASSES + 1)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (count, 4 * NUM_CLASSES)).astype(np.float32)
  proposals = _boxes(rng, count)
  gt_boxes = proposals + rng.uniform(-1, 1, (count, 4)).astype(np.float32)  # sides > 0
  classes = rng.integers(0, NUM_CLASSES + 1, count).astype(np.int32)  # K = background
  valid = np.arange(count) < 20  # 4 padding rows, with garbage that must not leak
  gt_boxes[~valid], classes[~valid] = 0.0, -1
  got = fast_rcnn.fast_rcnn_losses(scores, deltas, proposals, classes, gt_boxes, valid,
                                   num_classes=NUM_CLASSES)
  expected = ref.fast_rcnn_losses(scores[valid], deltas[valid], proposals[valid],
                                  gt_boxes[valid], classes[valid], NUM_CLASSES)
  for name in expected:
    assert np.isfinite(expected[name]) and expected[name] > 0, name
    np.testing.assert_allclose(float(got[name]), expected[name], rtol=1e-5, err_msg=name)
  grads = jax.grad(lambda s, d: sum(fast_rcnn.fast_rcnn_losses(
      s, d, proposals, classes, gt_boxes, valid, num_classes=NUM_CLASSES).values()),
                   argnums=(0, 1))(scores, deltas)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~valid] == 0)


def test_predicted_boxes_decode_each_class_from_its_proposal():
  rng = np.random.default_rng(1)
  proposals = _boxes(rng, 6)
  targets = _boxes(rng, 6 * NUM_CLASSES).reshape(6, NUM_CLASSES, 4)
  deltas = np.stack([ref.get_deltas(proposals, targets[:, k], fast_rcnn.BOX_WEIGHTS)
                     for k in range(NUM_CLASSES)], axis=1).reshape(6, -1)
  logits = rng.normal(size=(6, NUM_CLASSES + 1)).astype(np.float32)
  predicted, scores = fast_rcnn.predict_boxes_and_scores(logits, deltas, proposals)
  np.testing.assert_allclose(np.asarray(predicted).reshape(6, NUM_CLASSES, 4), targets,
                             rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(np.asarray(scores), np.exp(logits) / np.exp(logits).sum(
      axis=1, keepdims=True), rtol=1e-5)
