"""detectron2 modeling/proposal_generator/rpn.py `RPN` with static shapes (METHODS.md 13).

Anchor labelling (label_and_sample_anchors: matcher 0.3/0.7 with low-quality matches,
256 anchors per image at positive fraction 0.5), the losses (objectness BCE over the
sampled anchors, smooth-L1 with beta 0 = L1 on the deltas of the positives, both summed
and divided by 256 * images) and proposal selection (find_top_rpn_proposals).
Per-image functions take unbatched arrays; the detector vmaps them over images.
"""
import jax.numpy as jnp
from flax import nnx

from kd_jax.detection import boxes, losses, matcher, sampling


class RPN(nnx.Module):
  """The `proposal_generator` of detectron2's state dict: holds `rpn_head`."""

  def __init__(self, rpn_head):
    self.rpn_head = rpn_head


def label_and_sample_anchors(key, anchors, gt_boxes, gt_valid, *, batch_size_per_image=256,
                             positive_fraction=0.5, iou_thresholds=(0.3, 0.7)):
  """RPN.label_and_sample_anchors for one image.

  anchors [N, 4] (all levels), gt_boxes [G, 4] with gt_valid [G]. Returns labels [N] int32
  (1 sampled positive, 0 sampled negative, -1 ignored) and the matched ground-truth box
  [N, 4] of every anchor (meaningful where the label is 1). No boundary pruning
  (BOUNDARY_THRESH -1).
  """
  iou = boxes.pairwise_iou(gt_boxes, anchors)
  matched_gt, match_labels = matcher.match(iou, gt_valid, iou_thresholds, (0, -1, 1),
                                           allow_low_quality_matches=True)
  labels = match_labels.astype(jnp.int32)
  pos, neg = sampling.subsample_labels(key, labels, jnp.ones(labels.shape, bool),
                                       batch_size_per_image, positive_fraction, 0)
  labels = jnp.where(pos, 1, jnp.where(neg, 0, -1))
  return labels, gt_boxes[matched_gt]


def rpn_losses(anchors, objectness_logits, anchor_deltas, labels, matched_gt_boxes, *,
               batch_size_per_image=256, box_weights=(1.0, 1.0, 1.0, 1.0), smooth_l1_beta=0.0):
  """RPN.losses: {'loss_rpn_cls', 'loss_rpn_loc'} for a batch.

  anchors [N, 4]; objectness_logits [B, N]; anchor_deltas [B, N, 4]; labels [B, N] from
  label_and_sample_anchors; matched_gt_boxes [B, N, 4]. Both sums are divided by
  batch_size_per_image * B (detectron2's normalizer, whatever the number sampled).
  """
  positive = labels == 1
  target = boxes.encode(matched_gt_boxes, anchors[None], box_weights)
  # Targets of non-positive anchors may be inf/nan (padding boxes): zero them first.
  diff = jnp.where(positive[..., None],
                   anchor_deltas.astype(jnp.float32) - jnp.where(positive[..., None], target, 0),
                   0.0)
  localization = jnp.sum(losses.smooth_l1(diff, smooth_l1_beta))
  bce = losses.binary_cross_entropy_with_logits(objectness_logits.astype(jnp.float32),
                                                positive.astype(jnp.float32))
  objectness = jnp.sum(jnp.where(labels >= 0, bce, 0.0))
  normalizer = batch_size_per_image * labels.shape[0]
  return {'loss_rpn_cls': objectness / normalizer, 'loss_rpn_loc': localization / normalizer}
