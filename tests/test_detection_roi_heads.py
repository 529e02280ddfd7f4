"""ROI-head sampling (roi_heads.py) and the Fast R-CNN losses (fast_rcnn.py) against
NumPy transcriptions of detectron2's roi_heads.py / fast_rcnn.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.detection import fast_rcnn, roi_heads
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


_SAMPLE_FN = jax.jit(lambda k, p, pv, gt, cls, gv: roi_heads.label_and_sample_proposals(
    k, p, pv, gt, cls, gv, num_classes=NUM_CLASSES, batch_size_per_image=16))


@pytest.mark.parametrize('num_gt', [0, 3])
def test_label_and_sample_proposals_matches_detectron2(num_gt):
  rng = np.random.default_rng(num_gt)
  gt = _boxes(rng, num_gt, low=10.0)
  gt_classes = rng.integers(0, NUM_CLASSES, num_gt).astype(np.int32)
  # proposals: jittered copies of the ground truth (foreground) and random boxes
  near = np.repeat(gt, 3, axis=0) + rng.uniform(-3, 3, (3 * num_gt, 4)).astype(np.float32)
  proposals = np.concatenate([near, _boxes(rng, 30 - len(near))])
  proposal_valid = np.arange(30) < 26  # 4 padding proposals
  pad = 4 - num_gt
  gt_padded = np.concatenate([gt, np.zeros((pad, 4), np.float32)])
  classes_padded = np.concatenate([gt_classes, np.zeros(pad, np.int32)])
  gt_valid = np.arange(4) < num_gt
  out = {k: np.asarray(v) for k, v in _SAMPLE_FN(
      jax.random.key(num_gt), proposals, proposal_valid, gt_padded, classes_padded,
      gt_valid).items()}

  candidates, classes, matched = ref.proposal_labels(proposals[proposal_valid], gt,
                                                     gt_classes, NUM_CLASSES)
  num_fg_all = np.sum(classes < NUM_CLASSES)
  num_fg = min(num_fg_all, int(16 * 0.25))
  num_bg = min(np.sum(classes == NUM_CLASSES), 16 - num_fg)
  assert out['valid'].sum() == num_fg + num_bg
  assert np.all(out['valid'][:num_fg + num_bg])
  if num_gt:
    assert num_fg_all >= num_gt  # the appended ground truth is foreground
  index = [int(np.flatnonzero(np.all(candidates == box, axis=1))[0])
           for box in out['boxes'][out['valid']]]
  assert len(set(index)) == len(index)  # without replacement
  np.testing.assert_array_equal(out['classes'][out['valid']], classes[index])
  # foreground first, then background (torch.cat([fg, bg]))
  assert np.all(out['classes'][:num_fg] < NUM_CLASSES)
  assert np.all(out['classes'][num_fg:num_fg + num_bg] == NUM_CLASSES)
  np.testing.assert_array_equal(out['gt_boxes'][:num_fg], matched[index[:num_fg]])
