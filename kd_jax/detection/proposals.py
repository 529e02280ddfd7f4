"""RPN proposal selection with static shapes (detectron2 proposal_utils.find_top_rpn_proposals).

Per level: the pre_nms_topk highest objectness logits, their anchors decoded (decoding only
the chosen ones equals detectron2's decode-all-then-gather), clipped to the image, empty
boxes (side <= min_box_size) and non-finite ones dropped, NMS within the level; then the
post_nms_topk highest-scoring kept boxes over all levels. detectron2 runs one batched_nms
over the levels' ids: the same boxes as one NMS per level (boxes of different levels never
suppress each other) merged by score, which costs sum_l N_l^2 IoUs instead of (sum_l N_l)^2.
Inputs are wrapped in stop_gradient: detectron2's RPN.predict_proposals runs under no_grad.
"""
import jax
import jax.numpy as jnp

from kd_jax.detection import boxes as box_ops
from kd_jax.detection import nms as nms_ops


def _merge_by_score(scores, valid, count):
  """Indices of the `count` best valid entries: score descending, ties in input order."""
  _, _, order = jax.lax.sort((~valid, -scores, jnp.arange(scores.shape[0])), num_keys=2,
                             is_stable=True)
  return order[:count]


def find_top_proposals(anchors, deltas, logits, image_hw, nms_thresh=0.7, pre_nms_topk=2000,
                       post_nms_topk=1000, min_box_size=0.0, weights=(1.0, 1.0, 1.0, 1.0)):
  """(boxes [P, 4], logits [P], valid [P]) of one image, P = post_nms_topk, best first.

  anchors, deltas: one [A_l, 4] array per level; logits: one [A_l] per level (detectron2's
  flattened (Hi, Wi, A) order); image_hw: the unpadded image's (height, width), may be
  traced. Slots past the number of proposals found have valid False.
  """
  height, width = image_hw
  level_boxes, level_scores, level_valid = [], [], []
  for level_anchors, level_deltas, level_logits in zip(anchors, deltas, logits):
    level_deltas = jax.lax.stop_gradient(level_deltas)
    level_logits = jax.lax.stop_gradient(level_logits)
    count = min(level_logits.shape[0], pre_nms_topk)
    top_logits, top = jax.lax.top_k(level_logits, count)
    decoded = box_ops.decode(level_deltas[top], jnp.asarray(level_anchors)[top], weights)
    finite = jnp.all(jnp.isfinite(decoded), axis=1) & jnp.isfinite(top_logits)
    decoded = box_ops.clip(jnp.where(finite[:, None], decoded, 0.0), height, width)
    valid = finite & box_ops.nonempty(decoded, min_box_size)
    kept, kept_valid = nms_ops.nms(decoded, top_logits, valid, nms_thresh,
                                   min(count, post_nms_topk))
    level_boxes.append(decoded[kept])
    level_scores.append(top_logits[kept])
    level_valid.append(kept_valid)
  all_boxes = jnp.concatenate(level_boxes)
  all_scores = jnp.concatenate(level_scores)
  all_valid = jnp.concatenate(level_valid)
  best = _merge_by_score(all_scores, all_valid, post_nms_topk)
  num_found = all_scores.shape[0]
  if num_found < post_nms_topk:  # fewer candidates than slots: pad
    pad = post_nms_topk - num_found
    return (jnp.pad(all_boxes[best], ((0, pad), (0, 0))), jnp.pad(all_scores[best], (0, pad)),
            jnp.pad(all_valid[best], (0, pad)))
  return all_boxes[best], all_scores[best], all_valid[best]
