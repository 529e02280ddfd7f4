"""NumPy transcriptions of detectron2's training targets and losses (tests only).

Written from detectron2: structures/boxes.py pairwise_iou, modeling/matcher.py Matcher,
box_regression.py Box2BoxTransform.get_deltas and _dense_box_regression_loss,
proposal_generator/rpn.py RPN.label_and_sample_anchors (before subsample_labels) and
RPN.losses, roi_heads/roi_heads.py label_and_sample_proposals / _sample_proposals (before
subsample_labels), proposal_utils.add_ground_truth_to_proposals, roi_heads/fast_rcnn.py
FastRCNNOutputLayers.losses / box_reg_loss. Unpadded inputs (only real boxes), loops where
detectron2 has them.
"""
import numpy as np


def iou(boxes1, boxes2):
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  width_height = (np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
                  - np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])).clip(min=0)
  inter = width_height.prod(axis=2)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(inter > 0, inter / (area1[:, None] + area2[None] - inter), 0.0)


def match(quality, thresholds, labels, allow_low_quality_matches):
  """Matcher.__call__ on a [G, N] matrix (G may be 0)."""
  n = quality.shape[1]
  if quality.shape[0] == 0:
    return np.zeros(n, np.int64), np.full(n, labels[0], np.int8)
  matched_vals, matches = quality.max(axis=0), quality.argmax(axis=0)
  match_labels = np.ones(n, np.int8)
  bounds = [-np.inf] + list(thresholds) + [np.inf]
  for label, low, high in zip(labels, bounds[:-1], bounds[1:]):
    match_labels[(matched_vals >= low) & (matched_vals < high)] = label
  if allow_low_quality_matches:
    highest = quality.max(axis=1)
    _, pred_inds = np.nonzero(quality == highest[:, None])
    match_labels[pred_inds] = 1
  return matches, match_labels


def get_deltas(src, dst, weights):
  wx, wy, ww, wh = weights
  src_w, src_h = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
  src_x, src_y = src[:, 0] + 0.5 * src_w, src[:, 1] + 0.5 * src_h
  dst_w, dst_h = dst[:, 2] - dst[:, 0], dst[:, 3] - dst[:, 1]
  dst_x, dst_y = dst[:, 0] + 0.5 * dst_w, dst[:, 1] + 0.5 * dst_h
  return np.stack([wx * (dst_x - src_x) / src_w, wy * (dst_y - src_y) / src_h,
                   ww * np.log(dst_w / src_w), wh * np.log(dst_h / src_h)], axis=1)


def anchor_labels(anchors, gt_boxes):
  """label_and_sample_anchors before subsampling: (labels {-1,0,1}, matched gt boxes)."""
  matches, labels = match(iou(gt_boxes, anchors), [0.3, 0.7], [0, -1, 1], True)
  matched = gt_boxes[matches] if len(gt_boxes) else np.zeros_like(anchors)
  return labels, matched


def rpn_losses(anchors, logits, deltas, labels, matched, batch_size_per_image=256):
  """RPN.losses with smooth_l1 beta 0 (L1) and box weights (1, 1, 1, 1)."""
  num_images = len(labels)
  pos = labels == 1
  with np.errstate(divide='ignore', invalid='ignore'):  # unused rows may be degenerate
    gt_deltas = np.stack([get_deltas(anchors, m, (1.0, 1.0, 1.0, 1.0)) for m in matched])
  loc = np.abs(deltas[pos] - gt_deltas[pos]).sum()
  valid = labels >= 0
  x, z = logits[valid].astype(np.float64), labels[valid].astype(np.float64)
  cls = (np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))).sum()
  normalizer = batch_size_per_image * num_images
  return {'loss_rpn_cls': cls / normalizer, 'loss_rpn_loc': loc / normalizer}


def proposal_labels(proposals, gt_boxes, gt_classes, num_classes):
  """label_and_sample_proposals before subsampling: GT appended; (candidate boxes, their
  gt_classes (num_classes = background), matched gt boxes)."""
  candidates = np.concatenate([proposals, gt_boxes], axis=0)
  matches, labels = match(iou(gt_boxes, candidates), [0.5], [0, 1], False)
  if len(gt_classes):
    classes = gt_classes[matches].copy()
    classes[labels == 0] = num_classes
    classes[labels == -1] = -1
    matched = gt_boxes[matches]
  else:
    classes = np.full(len(candidates), num_classes)
    matched = candidates
  return candidates, classes, matched


def fast_rcnn_losses(scores, deltas, proposal_boxes, gt_boxes, gt_classes, num_classes,
                     weights=(10.0, 10.0, 5.0, 5.0)):
  """FastRCNNOutputLayers.losses: CE mean; L1 box loss of the fg rows / R."""
  scores = scores.astype(np.float64)
  shifted = scores - scores.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  loss_cls = -log_probs[np.arange(len(gt_classes)), gt_classes].mean()
  fg = np.nonzero((gt_classes >= 0) & (gt_classes < num_classes))[0]
  fg_deltas = deltas.reshape(-1, num_classes, 4)[fg, gt_classes[fg]]
  target = get_deltas(proposal_boxes[fg], gt_boxes[fg], weights)
  loss_box = np.abs(fg_deltas - target).sum() / max(len(gt_classes), 1)
  return {'loss_cls': loss_cls, 'loss_box_reg': loss_box}
