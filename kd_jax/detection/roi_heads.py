"""detectron2 modeling/roi_heads/roi_heads.py `StandardROIHeads` (box branch) with static
shapes (METHODS.md 13).

Training: ground truth appended to the proposals (add_ground_truth_to_proposals), IoU 0.5
matcher, 512 RoIs per image at positive fraction 0.25 (label_and_sample_proposals); the
box head runs on ROIAlignV2 7x7 features of p2..p5 (ROIPooler, level from the canonical
box 224 at level 4). Losses and predictions are in fast_rcnn.py.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.detection import boxes, matcher, roi_align, sampling

POOLER_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


class StandardROIHeads(nnx.Module):
  """The `roi_heads` of detectron2's state dict: `box_head` and `box_predictor`."""

  def __init__(self, box_head, box_predictor, *, pooler_resolution=7, sampling_ratio=0,
               max_sampling=roi_align.DEFAULT_MAX_SAMPLING):
    self.box_head = box_head
    self.box_predictor = box_predictor
    self.pooler_resolution = pooler_resolution
    self.sampling_ratio = sampling_ratio
    self.max_sampling = max_sampling

  def box_features(self, features, rois):
    """features: [B, Hl, Wl, C] for p2..p5; rois [B, R, 4] -> box-head output [B, R, d]."""
    def pool(image_features, image_rois):
      return roi_align.multilevel_roi_align(
          image_features, image_rois, self.pooler_resolution, POOLER_SCALES,
          self.sampling_ratio, self.max_sampling)
    pooled = jax.vmap(pool)(list(features), rois)
    batch, count = rois.shape[:2]
    return self.box_head(pooled.reshape((batch * count,) + pooled.shape[2:])).reshape(
        batch, count, -1)


def label_and_sample_proposals(key, proposal_boxes, proposal_valid, gt_boxes, gt_classes,
                               gt_valid, *, num_classes, batch_size_per_image=512,
                               positive_fraction=0.25, iou_threshold=0.5):
  """ROIHeads.label_and_sample_proposals for one image (PROPOSAL_APPEND_GT True).

  proposal_boxes [P, 4] with proposal_valid [P]; ground truth [G, 4], classes [G] in
  0..K-1, gt_valid [G]. Returns a dict of [S] / [S, 4] arrays, S = batch_size_per_image:
  'boxes' (the sampled RoIs: foreground first, then background, then padding), 'classes'
  (matched class, num_classes for background), 'gt_boxes' (matched ground truth), 'valid'.
  """
  candidates = jnp.concatenate([proposal_boxes, gt_boxes], axis=0)
  candidate_valid = jnp.concatenate([proposal_valid, gt_valid], axis=0)
  iou = boxes.pairwise_iou(gt_boxes, candidates)
  matched_gt, match_labels = matcher.match(iou, gt_valid, (iou_threshold,), (0, 1),
                                           allow_low_quality_matches=False)
  classes = jnp.where(match_labels == 0, num_classes, gt_classes[matched_gt])
  classes = jnp.where(match_labels == -1, -1, classes).astype(jnp.int32)
  indices, valid = sampling.sample_indices(key, classes, candidate_valid,
                                           batch_size_per_image, positive_fraction,
                                           num_classes)
  return {'boxes': candidates[indices], 'classes': jnp.where(valid, classes[indices], -1),
          'gt_boxes': gt_boxes[matched_gt[indices]], 'valid': valid}
