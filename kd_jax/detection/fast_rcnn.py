"""detectron2 modeling/roi_heads/fast_rcnn.py FastRCNNOutputLayers: losses and box
predictions (METHODS.md 13).

Cross-entropy (mean over the sampled RoIs) and class-specific smooth-L1 (beta 0 = L1) on
the foreground's deltas, summed and divided by the number of sampled RoIs; deltas are
weighted (10, 10, 5, 5) (ROI_BOX_HEAD.BBOX_REG_WEIGHTS).
"""
import jax
import jax.numpy as jnp

from kd_jax.detection import boxes, losses

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def fast_rcnn_losses(class_logits, proposal_deltas, proposal_boxes, gt_classes, gt_boxes,
                     valid, *, num_classes, box_weights=BOX_WEIGHTS, smooth_l1_beta=0.0):
  """FastRCNNOutputLayers.losses over all sampled RoIs of the batch (flattened to [R]).

  class_logits [R, K+1]; proposal_deltas [R, 4K]; proposal_boxes, gt_boxes [R, 4];
  gt_classes [R] (K = background); valid [R] marks real samples. Returns {'loss_cls':
  mean cross-entropy, 'loss_box_reg': L1 on the gt class's deltas of the foreground, summed
  and divided by the number of sampled RoIs (fast_rcnn.py box_reg_loss)}.
  """
  count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  labels = jnp.clip(gt_classes, 0, num_classes)
  loss_cls = jnp.sum(jnp.where(valid, losses.cross_entropy(class_logits, labels), 0.0)) / count
  foreground = valid & (gt_classes >= 0) & (gt_classes < num_classes)
  per_class = proposal_deltas.astype(jnp.float32).reshape(-1, num_classes, 4)
  chosen = jnp.take_along_axis(per_class, jnp.clip(gt_classes, 0, num_classes - 1)[:, None, None],
                               axis=1)[:, 0]
  target = boxes.encode(gt_boxes, proposal_boxes, box_weights)
  fg = foreground[:, None]
  diff = jnp.where(fg, chosen - jnp.where(fg, target, 0.0), 0.0)
  loss_box_reg = jnp.sum(losses.smooth_l1(diff, smooth_l1_beta)) / count
  return {'loss_cls': loss_cls, 'loss_box_reg': loss_box_reg}


def predict_boxes_and_scores(class_logits, proposal_deltas, proposal_boxes,
                             box_weights=BOX_WEIGHTS):
  """FastRCNNOutputLayers.predict_boxes / predict_probs: class-specific boxes [R, 4K]
  decoded from the proposals and softmax scores [R, K+1]."""
  predicted = boxes.decode(proposal_deltas, proposal_boxes, box_weights)
  return predicted, jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
