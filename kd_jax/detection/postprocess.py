"""Fast R-CNN inference with static shapes (detectron2 roi_heads/fast_rcnn.py
fast_rcnn_inference_single_image) and the rescale to the original image
(detectron2/modeling/postprocessing.py detector_postprocess).

detectron2 keeps the (proposal, class) pairs with score > score_thresh and runs one
batched_nms over them. Here NMS runs per class over all R proposals (vmapped, the pairs
below the threshold masked out), keeping at most topk per class, then the topk best over
classes: exactly the same detections (a class cannot contribute more than topk to the
final topk, and greedy NMS of a class depends only on that class's boxes), with no bound
on how many pairs pass the threshold.
"""
import jax
import jax.numpy as jnp

from kd_jax.detection import boxes as box_ops
from kd_jax.detection import nms as nms_ops


def fast_rcnn_inference(boxes, scores, image_hw, score_thresh=0.05, nms_thresh=0.5, topk=100,
                        valid=None):
  """Detections of one image: (boxes [topk, 4], scores [topk], classes [topk] int32,
  proposal indices [topk] int32, valid [topk]), best first.

  boxes [R, K * 4] class-specific (or [R, 4] class-agnostic) decoded boxes; scores
  [R, K + 1] class probabilities, background last; valid [R] marks real proposals (None: all);
  image_hw the (height, width) the boxes are clipped to. Ties in score keep detectron2's
  order: by proposal, then class.
  """
  num_rois, num_classes = scores.shape[0], scores.shape[1] - 1
  finite = jnp.all(jnp.isfinite(boxes), axis=1) & jnp.all(jnp.isfinite(scores), axis=1)
  if valid is not None:
    finite = finite & valid
  per_class = boxes.reshape(num_rois, -1, 4)
  per_class = jnp.broadcast_to(per_class, (num_rois, num_classes, 4))
  per_class = box_ops.clip(jnp.where(finite[:, None, None], per_class, 0.0), *image_hw)
  class_scores = scores[:, :-1]
  passing = (class_scores > score_thresh) & finite[:, None]
  per_class_kept = min(topk, num_rois)
  kept, kept_valid = jax.vmap(
      lambda b, s, v: nms_ops.nms(b, s, v, nms_thresh, per_class_kept),
      in_axes=(1, 1, 1))(per_class, class_scores, passing)          # [K, per_class_kept]
  classes = jnp.broadcast_to(jnp.arange(num_classes)[:, None], kept.shape)
  cand_scores = class_scores[kept, classes].ravel()
  cand_valid = kept_valid.ravel()
  _, _, _, order = jax.lax.sort((~cand_valid, -cand_scores, kept.ravel() * num_classes
                                 + classes.ravel(), jnp.arange(cand_scores.shape[0])),
                                num_keys=3, is_stable=True)
  best = order[:topk]
  rois, labels = kept.ravel()[best], classes.ravel()[best]
  out = (per_class[rois, labels], cand_scores[best], labels.astype(jnp.int32),
         rois.astype(jnp.int32), cand_valid[best])
  if best.shape[0] < topk:  # fewer (proposal, class) slots than topk: pad
    pad = topk - best.shape[0]
    out = tuple(jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) for x in out)
  return out


def detector_postprocess(boxes, valid, image_hw, output_hw):
  """Boxes scaled from the network's input size to output_hw, clipped, empty ones invalid.

  postprocessing.py detector_postprocess: scale_x = out_w / in_w, scale_y = out_h / in_h,
  Boxes.scale, Boxes.clip(output size), then results[nonempty()] (here: valid False).
  """
  scale_x = output_hw[1] / image_hw[1]
  scale_y = output_hw[0] / image_hw[0]
  scaled = boxes * jnp.stack([scale_x, scale_y, scale_x, scale_y]).astype(boxes.dtype)
  scaled = box_ops.clip(scaled, *output_hw)
  return scaled, valid & box_ops.nonempty(scaled)
