"""IoU matcher with padded ground truth (detectron2/modeling/matcher.py `Matcher`).

Rows of `iou` whose `gt_valid` is False are padding: they never win the max and never
produce low-quality matches. With no valid ground truth every prediction gets
matched_gt 0 and labels[0], as detectron2 does for an empty match-quality matrix.
"""
import jax.numpy as jnp


def match(iou, gt_valid, thresholds, labels, allow_low_quality_matches):
  """(matched_gt [N] int32, match_labels [N] int8) for iou [G, N] (Matcher.__call__).

  thresholds: increasing, e.g. (0.3, 0.7); labels: one of {-1, 0, 1} per interval
  [-inf, t0), [t0, t1), ..., [t_last, inf). Ties in the max go to the first ground truth,
  as torch.max(dim=0). Low-quality matches (set_low_quality_matches_): every prediction
  whose IoU equals some valid ground truth's highest IoU (ties included) is labelled 1,
  keeping its own argmax ground truth.
  """
  if len(labels) != len(thresholds) + 1:
    raise ValueError(f"{len(labels)} labels for {len(thresholds)} thresholds")
  iou = jnp.where(gt_valid[:, None], iou, -1.0)
  matched_vals = jnp.max(iou, axis=0)
  matched_gt = jnp.argmax(iou, axis=0).astype(jnp.int32)
  # Interval index: how many thresholds are <= the value.
  bucket = jnp.sum(matched_vals[:, None] >= jnp.asarray(thresholds, jnp.float32), axis=1)
  match_labels = jnp.asarray(labels, jnp.int8)[bucket]
  if allow_low_quality_matches:
    highest = jnp.max(iou, axis=1, keepdims=True)
    is_highest = (iou == highest) & gt_valid[:, None]
    match_labels = jnp.where(jnp.any(is_highest, axis=0), jnp.int8(1), match_labels)
  return matched_gt, match_labels
