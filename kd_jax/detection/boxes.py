"""Box arithmetic on (x1, y1, x2, y2) float boxes, detectron2's convention (width = x2 - x1).

Follows detectron2/modeling/box_regression.py `Box2BoxTransform` (encode = get_deltas,
decode = apply_deltas) and detectron2/structures/boxes.py (`pairwise_iou`, `Boxes.clip`,
`Boxes.area`, `Boxes.nonempty`). Pure jnp on the last axis, so any leading shape works.
"""
import math

import jax.numpy as jnp

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)  # box_regression.py _DEFAULT_SCALE_CLAMP


def _center_size(boxes):
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode(boxes, anchors, weights):
  """Deltas (dx, dy, dw, dh) that take `anchors` to `boxes` (Box2BoxTransform.get_deltas)."""
  src_x, src_y, src_w, src_h = _center_size(anchors)
  dst_x, dst_y, dst_w, dst_h = _center_size(boxes)
  wx, wy, ww, wh = weights
  return jnp.stack([wx * (dst_x - src_x) / src_w, wy * (dst_y - src_y) / src_h,
                    ww * jnp.log(dst_w / src_w), wh * jnp.log(dst_h / src_h)], axis=-1)


def decode(deltas, anchors, weights, scale_clamp=DEFAULT_SCALE_CLAMP):
  """Boxes from `deltas` [..., 4k] applied to `anchors` [..., 4] (Box2BoxTransform.apply_deltas).

  dw and dh are clamped above at `scale_clamp` before exp; float32 as detectron2 decodes.
  k > 1 decodes class-specific deltas (k boxes per anchor), as the box predictor's 4K outputs.
  """
  deltas = deltas.astype(jnp.float32)
  ctr_x, ctr_y, widths, heights = _center_size(anchors.astype(jnp.float32))
  per_box = deltas.reshape(deltas.shape[:-1] + (-1, 4))
  wx, wy, ww, wh = weights
  dx, dy = per_box[..., 0] / wx, per_box[..., 1] / wy
  dw = jnp.minimum(per_box[..., 2] / ww, scale_clamp)
  dh = jnp.minimum(per_box[..., 3] / wh, scale_clamp)
  pred_x = dx * widths[..., None] + ctr_x[..., None]
  pred_y = dy * heights[..., None] + ctr_y[..., None]
  pred_w = jnp.exp(dw) * widths[..., None]
  pred_h = jnp.exp(dh) * heights[..., None]
  decoded = jnp.stack([pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h,
                       pred_x + 0.5 * pred_w, pred_y + 0.5 * pred_h], axis=-1)
  return decoded.reshape(deltas.shape)


def area(boxes):
  """(x2 - x1) * (y2 - y1) (Boxes.area)."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1, boxes2):
  """IoU [N, M] of [N, 4] x [M, 4]; 0 where the intersection is empty (structures/boxes.py)."""
  top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  width_height = jnp.maximum(bottom_right - top_left, 0.0)
  inter = width_height[..., 0] * width_height[..., 1]
  union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
  return jnp.where(inter > 0, inter / jnp.where(inter > 0, union, 1.0), 0.0)


def clip(boxes, height, width):
  """x clamped to [0, width], y to [0, height] (Boxes.clip); height/width may be traced."""
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  return jnp.stack([jnp.clip(x1, 0, width), jnp.clip(y1, 0, height),
                    jnp.clip(x2, 0, width), jnp.clip(y2, 0, height)], axis=-1)


def nonempty(boxes, threshold=0.0):
  """Both sides longer than `threshold` (Boxes.nonempty)."""
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  return (widths > threshold) & (heights > threshold)
