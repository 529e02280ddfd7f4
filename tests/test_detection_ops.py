"""The detection ops (kd_jax/detection) against torchvision and NumPy transcriptions.

Each reference below is transcribed from detectron2 (facebookresearch/detectron2, the file
and function named in its docstring) or is torchvision itself (roi_align, batched_nms,
the box coder). Small shapes: the whole file runs in seconds.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from kd_jax.detection import anchors, boxes, matcher, roi_align, sampling
from kd_jax.detection import nms as nms_ops
from kd_jax.detection import postprocess, proposals


def random_boxes(rng, count, size=100.0, min_side=1.0, max_side=40.0):
  """float32 [count, 4] boxes with corners in [0, size) and sides in [min_side, max_side)."""
  x1y1 = rng.uniform(0, size, (count, 2))
  wh = rng.uniform(min_side, max_side, (count, 2))
  return np.concatenate([x1y1, x1y1 + wh], axis=1).astype(np.float32)


# --- boxes -------------------------------------------------------------------------------

def np_get_deltas(src, dst, weights):
  """box_regression.py Box2BoxTransform.get_deltas."""
  src_w, src_h = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
  src_x, src_y = src[:, 0] + 0.5 * src_w, src[:, 1] + 0.5 * src_h
  dst_w, dst_h = dst[:, 2] - dst[:, 0], dst[:, 3] - dst[:, 1]
  dst_x, dst_y = dst[:, 0] + 0.5 * dst_w, dst[:, 1] + 0.5 * dst_h
  wx, wy, ww, wh = weights
  return np.stack([wx * (dst_x - src_x) / src_w, wy * (dst_y - src_y) / src_h,
                   ww * np.log(dst_w / src_w), wh * np.log(dst_h / src_h)], axis=1)


def np_apply_deltas(deltas, src, weights, scale_clamp=math.log(1000.0 / 16)):
  """box_regression.py Box2BoxTransform.apply_deltas (deltas [N, 4k])."""
  widths, heights = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
  ctr_x, ctr_y = src[:, 0] + 0.5 * widths, src[:, 1] + 0.5 * heights
  wx, wy, ww, wh = weights
  dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
  dw = np.minimum(deltas[:, 2::4] / ww, scale_clamp)
  dh = np.minimum(deltas[:, 3::4] / wh, scale_clamp)
  px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
  pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
  out = np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], axis=-1)
  return out.reshape(deltas.shape)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_detectron2_and_torchvision(weights):
  rng = np.random.default_rng(0)
  src, dst = random_boxes(rng, 64), random_boxes(rng, 64)
  deltas = np.asarray(boxes.encode(jnp.asarray(dst), jnp.asarray(src), weights))
  np.testing.assert_allclose(deltas, np_get_deltas(src, dst, weights), rtol=1e-5, atol=1e-5)
  coder = torchvision.models.detection._utils.BoxCoder(weights)
  torch_deltas = coder.encode_single(torch.from_numpy(dst), torch.from_numpy(src)).numpy()
  np.testing.assert_allclose(deltas, torch_deltas, rtol=1e-5, atol=1e-5)
  # Decoding 3 class-specific boxes per source box, with deltas large enough to hit the clamp.
  big = rng.normal(0, 3, (64, 12)).astype(np.float32) * np.asarray(weights * 3, np.float32)
  decoded = np.asarray(boxes.decode(jnp.asarray(big), jnp.asarray(src), weights))
  expected = np_apply_deltas(big.astype(np.float64), src.astype(np.float64), weights)
  assert (big[:, 2::4] / weights[2] > math.log(1000.0 / 16)).any()
  np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-3)
  torch_decoded = coder.decode_single(torch.from_numpy(big[:, :4]), torch.from_numpy(src)).numpy()
  np.testing.assert_allclose(decoded[:, :4], torch_decoded, rtol=1e-5, atol=1e-3)
  # Decoding the encoding gives back the target boxes.
  np.testing.assert_allclose(np.asarray(boxes.decode(jnp.asarray(deltas), jnp.asarray(src),
                                                     weights)), dst, rtol=1e-5, atol=1e-3)


def test_pairwise_iou_clip_nonempty_match_torchvision():
  rng = np.random.default_rng(1)
  a, b = random_boxes(rng, 20), random_boxes(rng, 30)
  a[0] = [5, 5, 5, 9]  # empty box: IoU 0, not NaN
  iou = np.asarray(boxes.pairwise_iou(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(iou, torchvision.ops.box_iou(torch.from_numpy(a),
                                                          torch.from_numpy(b)).numpy(), atol=1e-6)
  assert np.all(iou[0] == 0)
  clipped = np.asarray(boxes.clip(jnp.asarray(b), 60, 80))
  np.testing.assert_array_equal(clipped, torchvision.ops.clip_boxes_to_image(
      torch.from_numpy(b), (60, 80)).numpy())
  keep = np.asarray(boxes.nonempty(jnp.asarray(clipped), 2.0))
  np.testing.assert_array_equal(keep, ((clipped[:, 2] - clipped[:, 0]) > 2)
                                & ((clipped[:, 3] - clipped[:, 1]) > 2))
  assert 0 < keep.sum() < len(keep)


# --- anchors ------------------------------------------------------------------------------

def np_grid_anchors(size, stride, sizes, ratios, offset):
  """anchor_generator.py DefaultAnchorGenerator: generate_cell_anchors + _grid_anchors."""
  cell = []
  for s in sizes:
    for a in ratios:
      w = math.sqrt(s ** 2.0 / a)
      h = a * w
      cell.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
  cell = np.asarray(cell, np.float32)
  shifts_x = np.arange(offset * stride, size[1] * stride, step=stride, dtype=np.float32)
  shifts_y = np.arange(offset * stride, size[0] * stride, step=stride, dtype=np.float32)
  shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
  shifts = np.stack((shift_x.reshape(-1), shift_y.reshape(-1),
                     shift_x.reshape(-1), shift_y.reshape(-1)), axis=1)
  return (shifts.reshape(-1, 1, 4) + cell.reshape(1, -1, 4)).reshape(-1, 4)


def test_anchors_match_detectron2_order_and_values():
  hws = [(5, 7), (3, 4), (2, 2), (1, 1), (1, 1)]
  levels = anchors.all_anchors(hws)
  assert [len(a) for a in levels] == [h * w * 3 for h, w in hws]
  for hw, stride, size, got in zip(hws, (4, 8, 16, 32, 64), (32, 64, 128, 256, 512), levels):
    np.testing.assert_allclose(got, np_grid_anchors(hw, stride, (size,), (0.5, 1.0, 2.0), 0.0),
                               rtol=1e-6)
  # Index (y * W + x) * A + a: the anchor of ratio 1 at (y=1, x=2) on p2 is centred at (8, 4).
  np.testing.assert_allclose(levels[0][(1 * 7 + 2) * 3 + 1], [-8, -12, 24, 20], rtol=1e-6)
  np.testing.assert_allclose(anchors.grid_anchors((2, 3), 8, (16, 32), (1.0, 2.0), 0.5),
                             np_grid_anchors((2, 3), 8, (16, 32), (1.0, 2.0), 0.5), rtol=1e-6)


# --- matcher ------------------------------------------------------------------------------

def np_match(iou, thresholds, labels, allow_low_quality_matches):
  """matcher.py Matcher.__call__ + set_low_quality_matches_ (iou [G, N], G may be 0)."""
  if iou.size == 0:
    return np.zeros(iou.shape[1], np.int64), np.full(iou.shape[1], labels[0], np.int8)
  thresholds = [-float("inf")] + list(thresholds) + [float("inf")]
  matched_vals, matches = iou.max(axis=0), iou.argmax(axis=0)
  match_labels = np.ones(matches.shape, np.int8)
  for l, low, high in zip(labels, thresholds[:-1], thresholds[1:]):
    match_labels[(matched_vals >= low) & (matched_vals < high)] = l
  if allow_low_quality_matches:
    highest = iou.max(axis=1)
    _, pred_inds = np.nonzero(iou == highest[:, None])
    match_labels[pred_inds] = 1
  return matches, match_labels


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_matches_detectron2_with_padded_gt(low_quality):
  rng = np.random.default_rng(2)
  gt, preds = random_boxes(rng, 6, max_side=60), random_boxes(rng, 300)
  preds[7] = gt[2]  # an exact match
  preds[8] = gt[2]  # and a tie of the best match for gt 2
  iou = np.asarray(boxes.pairwise_iou(jnp.asarray(gt), jnp.asarray(preds)))
  num_valid = 4
  padded = np.concatenate([iou[:num_valid], rng.uniform(0, 1, (3, 300)).astype(np.float32)])
  gt_valid = np.arange(7) < num_valid
  fn = jax.jit(lambda q, v: matcher.match(q, v, (0.3, 0.7), (0, -1, 1), low_quality))
  matched, labels = map(np.asarray, fn(padded, gt_valid))
  expected_matched, expected_labels = np_match(iou[:num_valid], (0.3, 0.7), (0, -1, 1),
                                               low_quality)
  np.testing.assert_array_equal(matched, expected_matched)
  np.testing.assert_array_equal(labels, expected_labels)
  assert labels.dtype == np.int8 and matched.dtype == np.int32
  assert set(np.unique(labels)) == {-1, 0, 1}
  low_only = (iou[:num_valid].max(0) < 0.7) & (labels == 1)
  assert low_only.any() == low_quality
  # No valid ground truth: all matched to 0 with labels[0] (the empty-matrix branch).
  matched, labels = map(np.asarray, fn(padded, np.zeros(7, bool)))
  assert np.all(matched == 0) and np.all(labels == 0)


# --- sampling -----------------------------------------------------------------------------

def test_subsample_labels_counts_validity_determinism():
  rng = np.random.default_rng(3)
  labels = rng.choice([-1, 0, 1], size=500, p=[0.3, 0.6, 0.1]).astype(np.int32)
  valid = np.arange(500) < 450
  fn = jax.jit(lambda key, l, v: sampling.subsample_labels(key, l, v, 256, 0.5, 0))
  pos, neg = map(np.asarray, fn(jax.random.key(0), labels, valid))
  n_pos = ((labels == 1) & valid).sum()
  n_neg = ((labels == 0) & valid).sum()
  # sampling.py subsample_labels: num_pos = min(#pos, int(256 * 0.5)), num_neg = the rest.
  assert pos.sum() == min(n_pos, 128) and neg.sum() == min(n_neg, 256 - pos.sum())
  assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
  assert np.all(valid[pos]) and np.all(valid[neg]) and not (pos & neg).any()
  again = fn(jax.random.key(0), labels, valid)
  np.testing.assert_array_equal(np.asarray(again[1]), neg)
  other = np.asarray(fn(jax.random.key(1), labels, valid)[1])
  assert other.sum() == neg.sum() and (other != neg).any()
  # Too many positives: capped at 128, negatives fill the remaining 128.
  many = np.where(rng.uniform(size=500) < 0.5, 1, 0).astype(np.int32)
  pos, neg = map(np.asarray, fn(jax.random.key(2), many, valid))
  assert pos.sum() == 128 and neg.sum() == 128


def test_subsample_labels_is_uniform():
  """Each eligible positive is drawn with probability num_pos / #positives."""
  labels = np.zeros(40, np.int32)
  labels[:10] = 1
  fn = jax.jit(jax.vmap(
      lambda key: sampling.subsample_labels(key, labels, labels >= 0, 8, 0.25, 0)))
  pos, neg = map(np.asarray, fn(jax.random.split(jax.random.key(4), 2000)))
  np.testing.assert_allclose(pos[:, :10].mean(0), 0.2, atol=0.04)   # 2 of 10 positives
  np.testing.assert_allclose(neg[:, 10:].mean(0), 0.2, atol=0.04)   # 6 of 30 negatives
  assert np.all(pos.sum(1) == 2) and np.all(neg.sum(1) == 6)


def test_sample_indices_roi_heads_layout():
  rng = np.random.default_rng(5)
  num_classes = 4
  gt_classes = rng.choice([-1, 0, 1, 2, 3, num_classes], size=300,
                          p=[0.1, 0.05, 0.05, 0.05, 0.05, 0.7]).astype(np.int32)
  valid = np.arange(300) < 280
  fn = jax.jit(lambda key: sampling.sample_indices(key, gt_classes, valid, 64, 0.25, num_classes))
  indices, ok = map(np.asarray, fn(jax.random.key(0)))
  fg = valid & (gt_classes >= 0) & (gt_classes < num_classes)
  num_pos = min(fg.sum(), 16)
  num_neg = min((valid & (gt_classes == num_classes)).sum(), 64 - num_pos)
  assert ok.sum() == num_pos + num_neg and np.all(ok[:num_pos + num_neg])
  assert np.all(fg[indices[:num_pos]])
  assert np.all(gt_classes[indices[num_pos:num_pos + num_neg]] == num_classes)
  assert np.all(valid[indices[ok]]) and len(set(indices[ok])) == ok.sum()
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0))[0]), indices)
  # Few candidates: padding slots are invalid.
  few_valid = np.arange(300) < 20
  indices, ok = map(np.asarray, jax.jit(sampling.sample_indices, static_argnums=(3, 4, 5))(
      jax.random.key(1), gt_classes, few_valid, 64, 0.25, num_classes))
  expected = min((few_valid & fg).sum(), 16) + (few_valid & (gt_classes == num_classes)).sum()
  assert ok.sum() == expected and not ok[expected:].any() and np.all(few_valid[indices[ok]])


# --- roi_align ----------------------------------------------------------------------------

# One compile per static configuration, shared by the tests below.
jit_roi_align = jax.jit(roi_align.roi_align, static_argnums=(2, 3, 4, 5, 6))


def torch_roi_align(features, rois, output_size, scale, sampling_ratio, aligned=True):
  """torchvision.ops.roi_align on one NHWC map, returned NHWC."""
  nchw = torch.from_numpy(np.ascontiguousarray(features.transpose(2, 0, 1)[None]))
  out = torchvision.ops.roi_align(nchw, [torch.from_numpy(rois)], output_size, scale,
                                  sampling_ratio, aligned)
  return out.numpy().transpose(0, 2, 3, 1)


def roi_boxes(rng, count, image_hw):
  """Boxes over and partly outside an image, sides 0..40 px, one empty box."""
  x1y1 = rng.uniform(-15, np.asarray(image_hw[::-1]) + 5, (count, 2))
  out = np.concatenate([x1y1, x1y1 + rng.uniform(0, 40, (count, 2))], axis=1).astype(np.float32)
  out[0] = [8, 8, 8, 20]
  return out


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, True), (0, False)])
def test_roi_align_matches_torchvision(sampling_ratio, aligned):
  rng = np.random.default_rng(6)
  features = rng.normal(size=(9, 13, 3)).astype(np.float32)
  rois = roi_boxes(rng, 30, (36, 52))
  # Stride 4 and sides < 40 px: at most 10 feature px per side, ceil(10 / 3) = 4 <= the bound.
  got = np.asarray(jit_roi_align(features, rois, (3, 3), 0.25, sampling_ratio, aligned, 4))
  expected = torch_roi_align(features, rois, (3, 3), 0.25, sampling_ratio, aligned)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # The empty box has no adaptive samples (ceil(0) = 0) when aligned: torchvision gives 0.
  assert np.all(got[0] == 0) == (aligned and sampling_ratio == 0)


def test_roi_align_gradient_matches_torchvision():
  rng = np.random.default_rng(7)
  features = rng.normal(size=(9, 13, 2)).astype(np.float32)
  rois = roi_boxes(rng, 12, (36, 52))
  cotangent = rng.normal(size=(12, 3, 3, 2)).astype(np.float32)
  pool = lambda f: jit_roi_align(f, rois, (3, 3), 0.25, 0, True, 4)
  got = np.asarray(jax.vjp(pool, jnp.asarray(features))[1](jnp.asarray(cotangent))[0])
  nchw = torch.from_numpy(features.transpose(2, 0, 1)[None].copy()).requires_grad_()
  out = torchvision.ops.roi_align(nchw, [torch.from_numpy(rois)], (3, 3), 0.25, 0, True)
  out.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(got, nchw.grad.numpy()[0].transpose(1, 2, 0), atol=1e-5)


def test_roi_align_bound_equals_fixed_sampling_for_large_boxes():
  """Past the bound the adaptive grid becomes max_sampling samples per axis (module docstring)."""
  rng = np.random.default_rng(8)
  features = rng.normal(size=(20, 20, 2)).astype(np.float32)
  large = np.asarray([[0, 0, 60, 70], [5, 3, 79, 66]], np.float32)  # ceil(side / 4 / 3): 5..7
  pool = lambda rois, bound: np.asarray(jit_roi_align(features, rois, 3, 0.25, 0, True, bound))
  np.testing.assert_allclose(pool(large, 3), torch_roi_align(features, large, 3, 0.25, 3),
                             atol=1e-5)
  np.testing.assert_allclose(pool(large, 7), torch_roi_align(features, large, 3, 0.25, 0),
                             atol=1e-5)
  assert np.abs(pool(large, 3) - pool(large, 7)).max() > 1e-3


def np_assign_levels(rois, min_level, max_level, canonical_box, canonical_level):
  """poolers.py assign_boxes_to_levels."""
  sizes = np.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
  levels = np.floor(canonical_level + np.log2(sizes / canonical_box + 1e-8))
  return np.clip(levels, min_level, max_level).astype(np.int64) - min_level


def test_multilevel_roi_align_matches_detectron2_pooler():
  """poolers.py ROIPooler.forward (ROIAlignV2): each box pooled by roi_align on its level."""
  rng = np.random.default_rng(9)
  scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
  maps = [rng.normal(size=(64 // s, 96 // s, 2)).astype(np.float32) for s in (4, 8, 16, 32)]
  sides = np.asarray([4, 10, 30, 60, 112, 200, 230, 300, 450, 500], np.float32)
  rois = np.stack([np.full(10, 3.0), np.full(10, 5.0), 3 + sides, 5 + sides * 0.9], 1)
  rois = np.concatenate([rois, roi_boxes(rng, 10, (256, 384)) * 4]).astype(np.float32)
  levels = np_assign_levels(rois, 2, 5, 224, 4)
  np.testing.assert_array_equal(np.asarray(roi_align.assign_levels(jnp.asarray(rois))), levels)
  assert set(levels) == {0, 1, 2, 3}
  expected = np.zeros((len(rois), 5, 5, 2), np.float32)
  for level, (features, scale) in enumerate(zip(maps, scales)):
    at_level = levels == level
    expected[at_level] = torch_roi_align(features, rois[at_level], 5, scale, 0)
  pool = jax.jit(lambda f, b: roi_align.multilevel_roi_align(f, b, 5, scales, max_sampling=32))
  np.testing.assert_allclose(np.asarray(pool([jnp.asarray(m) for m in maps], rois)), expected,
                             atol=1e-5)


# --- nms ----------------------------------------------------------------------------------

def clustered_boxes(rng, count, clusters=6):
  """Boxes jittered around a few centres (long suppression chains), scores with ties."""
  centres = random_boxes(rng, clusters, size=60, min_side=10, max_side=40)
  out = centres[rng.integers(0, clusters, count)] + rng.normal(0, 3, (count, 4))
  out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 0.5)
  scores = np.round(rng.uniform(0, 1, count), 2).astype(np.float32)  # many exact ties
  out[5] = out[4]  # a duplicate box
  return out.astype(np.float32), scores


@pytest.mark.parametrize("block_size", [16, 256])
def test_nms_matches_torchvision(block_size):
  rng = np.random.default_rng(10)
  rois, scores = clustered_boxes(rng, 150)
  valid = rng.uniform(size=150) < 0.9
  fn = jax.jit(lambda b, s, v: nms_ops.nms(b, s, v, 0.5, 150, block_size))
  indices, ok = map(np.asarray, fn(rois, scores, valid))
  where_valid = np.nonzero(valid)[0]
  expected = where_valid[torchvision.ops.nms(torch.from_numpy(rois[valid]),
                                             torch.from_numpy(scores[valid]), 0.5).numpy()]
  assert 10 < len(expected) < valid.sum()
  np.testing.assert_array_equal(indices[ok], expected)
  assert not ok[len(expected):].any()
  # Truncation to max_output keeps the highest-scoring kept boxes.
  indices, ok = map(np.asarray, jax.jit(lambda b, s, v: nms_ops.nms(b, s, v, 0.5, 8, block_size))(
      rois, scores, valid))
  np.testing.assert_array_equal(indices, expected[:8])
  assert ok.all()


@pytest.mark.parametrize("block_size", [32, 512])
def test_batched_nms_matches_torchvision(block_size):
  rng = np.random.default_rng(11)
  rois, scores = clustered_boxes(rng, 300, clusters=4)
  classes = rng.integers(0, 5, 300).astype(np.int32)
  valid = np.ones(300, bool)
  valid[-10:] = False
  fn = jax.jit(lambda b, s, c, v: nms_ops.batched_nms(b, s, c, v, 0.7, 300, block_size))
  indices, ok = map(np.asarray, fn(rois, scores, classes, valid))
  expected = torchvision.ops.batched_nms(
      torch.from_numpy(rois[:-10]), torch.from_numpy(scores[:-10]),
      torch.from_numpy(classes[:-10]), 0.7).numpy()
  np.testing.assert_array_equal(indices[ok], expected)
  assert ok.sum() == len(expected)


# --- proposals ----------------------------------------------------------------------------

def np_find_top_rpn_proposals(proposals, logits, image_size, nms_thresh, pre_nms_topk,
                              post_nms_topk, min_box_size):
  """proposal_utils.py find_top_rpn_proposals for one image (inference: drops non-finite)."""
  topk_scores, topk_proposals, level_ids = [], [], []
  for level_id, (proposals_i, logits_i) in enumerate(zip(proposals, logits)):
    num = min(len(logits_i), pre_nms_topk)
    idx = np.argsort(-logits_i, kind="stable")[:num]
    topk_scores.append(logits_i[idx])
    topk_proposals.append(proposals_i[idx])
    level_ids.append(np.full(num, level_id))
  scores, boxes, lvl = map(np.concatenate, (topk_scores, topk_proposals, level_ids))
  valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
  scores, boxes, lvl = scores[valid], boxes[valid], lvl[valid]
  h, w = image_size
  boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h), boxes[:, 2].clip(0, w),
                    boxes[:, 3].clip(0, h)], axis=1)
  keep = ((boxes[:, 2] - boxes[:, 0]) > min_box_size) & ((boxes[:, 3] - boxes[:, 1]) > min_box_size)
  scores, boxes, lvl = scores[keep], boxes[keep], lvl[keep]
  keep = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                     torch.from_numpy(lvl), nms_thresh).numpy()[:post_nms_topk]
  return boxes[keep], scores[keep]


jit_find_top_proposals = jax.jit(proposals.find_top_proposals, static_argnums=(3, 4, 5, 6))


@pytest.mark.parametrize("min_box_size", [0.0, 3.0])  # traced: one compile for both
def test_find_top_proposals_matches_detectron2(min_box_size):
  rng = np.random.default_rng(12)
  hws = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
  level_anchors = anchors.all_anchors(hws, sizes=((8,), (16,), (32,), (64,), (128,)))
  deltas = [rng.normal(0, 0.5, a.shape).astype(np.float32) for a in level_anchors]
  logits = [rng.normal(0, 2, len(a)).astype(np.float32) for a in level_anchors]
  deltas[0][:3] = np.nan  # non-finite proposals are dropped (inference behaviour)
  image_hw = (60, 90)
  got_boxes, got_logits, ok = map(np.asarray, jit_find_top_proposals(
      level_anchors, deltas, logits, image_hw, 0.7, 100, 60, min_box_size))
  decoded = [np_apply_deltas(d, a, (1.0, 1.0, 1.0, 1.0)).astype(np.float32)
             for d, a in zip(deltas, level_anchors)]
  expected_boxes, expected_logits = np_find_top_rpn_proposals(decoded, logits, image_hw, 0.7, 100,
                                                              60, min_box_size)
  assert ok.sum() == len(expected_logits)
  np.testing.assert_allclose(got_logits[ok], expected_logits, rtol=1e-6)
  np.testing.assert_allclose(got_boxes[ok], expected_boxes, rtol=1e-5, atol=1e-4)
  assert not ok[len(expected_logits):].any()


# --- postprocess --------------------------------------------------------------------------

def np_fast_rcnn_inference_single_image(boxes, scores, image_shape, score_thresh, nms_thresh,
                                        topk_per_image):
  """fast_rcnn.py fast_rcnn_inference_single_image (class-specific boxes [R, K * 4])."""
  valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores).all(axis=1)
  boxes, scores = boxes[valid], scores[valid]
  rows = np.nonzero(valid)[0]
  scores = scores[:, :-1]
  num_bbox_reg_classes = boxes.shape[1] // 4
  h, w = image_shape
  boxes = boxes.reshape(-1, 4)
  boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h), boxes[:, 2].clip(0, w),
                    boxes[:, 3].clip(0, h)], axis=1).reshape(-1, num_bbox_reg_classes, 4)
  filter_mask = scores > score_thresh
  filter_inds = np.stack(np.nonzero(filter_mask), axis=1)
  boxes, scores = boxes[filter_mask], scores[filter_mask]
  keep = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                     torch.from_numpy(filter_inds[:, 1]), nms_thresh).numpy()
  keep = keep[:topk_per_image]
  return boxes[keep], scores[keep], filter_inds[keep, 1], rows[filter_inds[keep, 0]]


@pytest.mark.parametrize("topk", [15, 400])  # 400 > 5 classes x 60 proposals: padded
def test_fast_rcnn_inference_matches_detectron2(topk):
  rng = np.random.default_rng(13)
  num_rois, num_classes = 60, 5
  proposals_ = np.repeat(clustered_boxes(rng, num_rois, clusters=5)[0], num_classes, axis=0)
  class_boxes = (proposals_ + rng.normal(0, 2, proposals_.shape)).reshape(num_rois, -1)
  class_boxes = class_boxes.astype(np.float32)
  logits = rng.normal(0, 2, (num_rois, num_classes + 1))
  scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
  scores[3] = scores[2]  # a tie across proposals
  valid = np.arange(num_rois) < 52
  image_hw = (50, 70)
  fn = jax.jit(lambda b, s, v: postprocess.fast_rcnn_inference(b, s, image_hw, 0.05, 0.5, topk, v))
  got_boxes, got_scores, got_classes, got_rois, ok = map(np.asarray, fn(class_boxes, scores, valid))
  exp_boxes, exp_scores, exp_classes, exp_rois = np_fast_rcnn_inference_single_image(
      class_boxes[:52], scores[:52], image_hw, 0.05, 0.5, topk)
  assert ok.sum() == len(exp_scores) and (len(exp_scores) == topk) == (topk == 15)
  np.testing.assert_array_equal(got_scores[ok], exp_scores)
  np.testing.assert_array_equal(got_classes[ok], exp_classes)
  np.testing.assert_array_equal(got_rois[ok], exp_rois)
  np.testing.assert_allclose(got_boxes[ok], exp_boxes, atol=1e-6)
  assert not ok[len(exp_scores):].any()


def test_detector_postprocess_matches_detectron2():
  """postprocessing.py detector_postprocess: Boxes.scale, clip to the output size, nonempty."""
  rng = np.random.default_rng(14)
  dets = random_boxes(rng, 20, size=80)
  dets[0] = [82, 10, 90, 20]  # right of the output image after scaling: clipped to nothing
  valid = np.arange(20) < 18
  scaled, ok = map(np.asarray, jax.jit(postprocess.detector_postprocess)(
      dets, valid, jnp.asarray([64, 80]), jnp.asarray([48, 52])))
  scale_x, scale_y = 52 / 80, 48 / 64
  expected = dets * np.asarray([scale_x, scale_y, scale_x, scale_y], np.float32)
  expected = np.stack([expected[:, 0].clip(0, 52), expected[:, 1].clip(0, 48),
                       expected[:, 2].clip(0, 52), expected[:, 3].clip(0, 48)], axis=1)
  np.testing.assert_allclose(scaled, expected, rtol=1e-6)
  np.testing.assert_array_equal(ok, valid & ((expected[:, 2] > expected[:, 0])
                                             & (expected[:, 3] > expected[:, 1])))
  assert not ok[0]
