"""Greedy non-maximum suppression with static shapes, exact like torchvision.ops.nms.

torchvision (csrc/ops/cpu/nms_kernel.cpp) visits boxes in descending score order (stable
sort: ties keep input order) and suppresses every later box whose IoU with a kept box is
> iou_threshold, IoU = inter / (area_i + area_j - inter) in float32. Here the sorted boxes
are cut into blocks of `block_size`: a block's candidates are first suppressed by the boxes
kept in earlier blocks (one [block, N] IoU), then the greedy order inside the block is
resolved exactly by iterating keep = candidate & ~any(kept earlier in block & IoU > t) to
its fixed point (which is unique, and reached after at most the length of the longest
suppression chain). So N / block_size sequential steps instead of N, N^2 IoUs in all, and
the same kept set and order as torchvision's sequential loop. detectron2 calls
torchvision's nms/batched_nms (detectron2/layers/nms.py).
"""
import jax
import jax.numpy as jnp

DEFAULT_BLOCK_SIZE = 256


def _overlaps(block, boxes, iou_threshold):
  """[B, N] IoU > threshold, torchvision's formula (0 / 0 is NaN: no suppression)."""
  top_left = jnp.maximum(block[:, None, :2], boxes[None, :, :2])
  bottom_right = jnp.minimum(block[:, None, 2:], boxes[None, :, 2:])
  width_height = jnp.maximum(bottom_right - top_left, 0.0)
  inter = width_height[..., 0] * width_height[..., 1]
  area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  return inter / ((area(block)[:, None] + area(boxes)[None, :]) - inter) > iou_threshold


def _greedy_keep(boxes, groups, valid, iou_threshold, block_size):
  """Keep mask [N] of score-sorted boxes; only boxes of equal `groups` (None: all) suppress
  each other."""
  num = boxes.shape[0]
  block = min(block_size, num)
  pad = -num % block
  boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
  groups = None if groups is None else jnp.pad(groups, (0, pad))
  valid = jnp.pad(valid, (0, pad))
  later = jnp.arange(block)[:, None] < jnp.arange(block)[None, :]

  def resolve_block(index, keep):
    start = index * block
    block_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, block)
    suppresses = _overlaps(block_boxes, boxes, iou_threshold)
    if groups is not None:
      block_groups = jax.lax.dynamic_slice_in_dim(groups, start, block)
      suppresses = suppresses & (block_groups[:, None] == groups[None, :])
    # keep is still False from `start` on, so only earlier blocks' kept boxes count here.
    candidate = (jax.lax.dynamic_slice_in_dim(valid, start, block)
                 & ~jnp.any(suppresses & keep[None, :], axis=1))
    inside = jax.lax.dynamic_slice_in_dim(suppresses, start, block, axis=1) & later
    step = lambda kept: candidate & ~jnp.any(inside & kept[:, None], axis=0)
    kept, _ = jax.lax.while_loop(lambda state: jnp.any(state[0] != state[1]),
                                 lambda state: (step(state[0]), state[0]),
                                 (step(candidate), candidate))
    return jax.lax.dynamic_update_slice_in_dim(keep, kept, start, axis=0)

  keep = jax.lax.fori_loop(0, (num + pad) // block, resolve_block, jnp.zeros(num + pad, bool))
  return keep[:num]


def _nms(boxes, scores, groups, valid, iou_threshold, max_output, block_size):
  boxes = boxes.astype(jnp.float32)
  valid = valid & jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=1)
  # Descending score, ties in input order (torchvision's stable sort); invalid boxes last.
  _, _, order = jax.lax.sort((~valid, -scores, jnp.arange(scores.shape[0])), num_keys=2,
                             is_stable=True)
  keep = _greedy_keep(boxes[order], None if groups is None else groups[order], valid[order],
                      iou_threshold, block_size)
  # The kept positions, compacted in order by a scatter (jnp.nonzero's size= path is O(N^2)).
  slot = jnp.where(keep, jnp.cumsum(keep) - 1, max_output)
  positions = jnp.zeros(max_output, jnp.int32).at[slot].set(
      jnp.arange(keep.shape[0], dtype=jnp.int32), mode="drop")
  return order[positions].astype(jnp.int32), jnp.arange(max_output) < jnp.sum(keep)


def nms(boxes, scores, valid, iou_threshold, max_output, block_size=DEFAULT_BLOCK_SIZE):
  """(indices [max_output] int32, valid [max_output]): kept boxes, highest score first.

  As torchvision.ops.nms(boxes[valid], scores[valid], iou_threshold)[:max_output], with
  indices into the full arrays; slots past the number kept hold index 0 and valid False.
  Boxes or scores that are not finite count as invalid (detectron2 drops them first).
  """
  return _nms(boxes, scores, None, valid, iou_threshold, max_output, block_size)


def batched_nms(boxes, scores, classes, valid, iou_threshold, max_output,
                block_size=DEFAULT_BLOCK_SIZE):
  """nms within each class (torchvision.ops.batched_nms), the kept boxes ordered by score.

  torchvision offsets each class's boxes by class * (max coordinate + 1) so that classes
  cannot overlap; here the IoU test is masked to equal classes instead, which is the same
  result in exact arithmetic without the offsets' float32 rounding at large coordinates.
  """
  return _nms(boxes, scores, classes.astype(jnp.int32), valid, iou_threshold, max_output,
              block_size)
