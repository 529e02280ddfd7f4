"""detectron2's Faster R-CNN with FPN (meta_arch/rcnn.py GeneralizedRCNN) with static
shapes: one jit-able pure training forward over a padded batch (METHODS.md section 13).

Batch layout: {'image' [B, H, W, 3] RGB pixels 0..255 (H, W multiples of 32; what lies
beyond each image is zeroed after normalisation, as detectron2 pads), 'image_hw' [B, 2] int
(each image's real height, width), 'boxes' [B, G, 4] float (x1, y1, x2, y2 input pixels),
'classes' [B, G] int 0..K-1, 'box_valid' [B, G] bool (padding rows are ignored)}.

The module tree is detectron2's (`backbone` = FPN with `bottom_up`, `proposal_generator`
with `rpn_head`, `roi_heads` with `box_head` and `box_predictor`), so detectron2_names.py
loads model-zoo weights by name.
"""
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.detection import anchors as anchor_lib
from kd_jax.detection import (backbones, detectron2_names, fast_rcnn, fpn, heads,
                              postprocess, proposals, roi_heads, rpn, weights)
from kd_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Static settings, detectron2's defaults for faster_rcnn_R_*_FPN (config/defaults.py +
  Base-RCNN-FPN.yaml). `input_format` is the channel order the weights expect (the batch
  is RGB and is reversed for 'BGR'); pixel_mean/pixel_std are in that order."""
  num_classes: int = 80
  input_format: str = 'BGR'
  pixel_mean: tuple = (103.530, 116.280, 123.675)
  pixel_std: tuple = (1.0, 1.0, 1.0)
  anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
  aspect_ratios: tuple = (0.5, 1.0, 2.0)
  anchor_offset: float = 0.0
  rpn_iou_thresholds: tuple = (0.3, 0.7)
  rpn_batch_size_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_box_weights: tuple = (1.0, 1.0, 1.0, 1.0)
  rpn_smooth_l1_beta: float = 0.0
  rpn_nms_thresh: float = 0.7
  pre_nms_topk_train: int = 2000
  pre_nms_topk_test: int = 1000
  post_nms_topk_train: int = 1000
  post_nms_topk_test: int = 1000
  min_box_size: float = 0.0
  roi_iou_threshold: float = 0.5
  roi_batch_size_per_image: int = 512
  roi_positive_fraction: float = 0.25
  roi_box_weights: tuple = fast_rcnn.BOX_WEIGHTS
  roi_smooth_l1_beta: float = 0.0
  score_thresh_test: float = 0.05
  nms_thresh_test: float = 0.5
  detections_per_image: int = 100


class FasterRCNN(nnx.Module):
  """backbone (FPN p2..p6) -> RPN -> proposals -> StandardROIHeads box branch."""

  def __init__(self, backbone, config=DetectorConfig(), *, fc_dim=1024, dtype=jnp.float32,
               rngs):
    self.config = config
    self.backbone = backbone
    channels = backbone.out_channels
    self.proposal_generator = rpn.RPN(heads.StandardRPNHead(
        channels, len(config.aspect_ratios) * len(config.anchor_sizes[0]), dtype=dtype,
        rngs=rngs))
    self.roi_heads = roi_heads.StandardROIHeads(
        heads.FastRCNNConvFCHead(channels, fc_dim=fc_dim, dtype=dtype, rngs=rngs),
        heads.FastRCNNOutputLayers(fc_dim, config.num_classes, dtype=dtype, rngs=rngs))

  def preprocess(self, images, image_hw):
    """(x - pixel_mean) / pixel_std in the weights' channel order, zero beyond each image
    (ImageList.from_tensors pads the normalized images with 0)."""
    height, width = images.shape[1:3]
    divisor = self.backbone.size_divisibility
    if height % divisor or width % divisor:
      raise UserError(f"detector input {height}x{width} is not a multiple of {divisor}")
    images = images.astype(jnp.float32)
    if self.config.input_format == 'BGR':
      images = images[..., ::-1]
    images = (images - jnp.asarray(self.config.pixel_mean)) / jnp.asarray(self.config.pixel_std)
    rows = jnp.arange(height)[None, :, None] < image_hw[:, 0, None, None]
    cols = jnp.arange(width)[None, None, :] < image_hw[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], images, 0.0)

  def features(self, images, image_hw):
    """FPN features [p2, ..., p6] of the preprocessed batch."""
    return self.backbone(self.preprocess(images, image_hw))

  def anchors(self, features):
    """Per-level anchors [Hl*Wl*A, 4] (NumPy constants: they depend on shapes only)."""
    return anchor_lib.all_anchors([f.shape[1:3] for f in features], self.backbone.strides,
                                  self.config.anchor_sizes, self.config.aspect_ratios,
                                  self.config.anchor_offset)

  def proposals(self, features, image_hw, training):
    """RPN outputs and the per-image top proposals (no gradient, as detectron2).

    Returns (level_anchors, per-level objectness [B, Nl] and deltas [B, Nl, 4], proposal
    dict with 'boxes' [B, P, 4], 'valid' [B, P]); find_top_proposals stops gradients.
    """
    config = self.config
    level_anchors = self.anchors(features)
    logits, deltas = self.proposal_generator.rpn_head(features)
    pre_topk = config.pre_nms_topk_train if training else config.pre_nms_topk_test
    post_topk = config.post_nms_topk_train if training else config.post_nms_topk_test

    def top(image_logits, image_deltas, hw):
      return proposals.find_top_proposals(
          level_anchors, image_deltas, image_logits, hw, nms_thresh=config.rpn_nms_thresh,
          pre_nms_topk=pre_topk, post_nms_topk=post_topk, min_box_size=config.min_box_size,
          weights=config.rpn_box_weights)

    boxes, _, valid = jax.vmap(top)(logits, deltas, image_hw)
    return level_anchors, logits, deltas, {'boxes': boxes, 'valid': valid}

  def box_outputs(self, features, rois):
    """Box-head features [B, R, fc_dim] (after fc2 + ReLU), class logits [B, R, K+1] and
    deltas [B, R, 4K] of the given RoIs [B, R, 4] on features p2..p5; a teacher runs this
    on the student's sampled RoIs (ND's forward_pure_roi_head)."""
    box_features = self.roi_heads.box_features(features[:4], rois)
    class_logits, box_deltas = self.roi_heads.box_predictor(
        box_features.reshape(-1, box_features.shape[-1]))
    unflat = lambda x: x.reshape(rois.shape[:2] + x.shape[1:])
    return box_features, unflat(class_logits), unflat(box_deltas)

  def losses(self, batch, key):
    """The training forward: (losses, distillation outputs).

    losses: loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg (detectron2's names; the
    training loss is their sum). Distillation outputs (ND's forward_pure_roi_head inputs):
    'rois' [B, S, 4], 'roi_classes' [B, S] (K = background, -1 padding), 'roi_valid' [B, S],
    'box_features' [B, S, fc_dim] after fc2 + ReLU, 'class_logits' [B, S, K+1],
    'box_deltas' [B, S, 4K], and 'features' the FPN levels [p2..p6] (ReviewKD's input).
    """
    config = self.config
    features = self.features(batch['image'], batch['image_hw'])
    level_anchors, logits, deltas, proposal = self.proposals(features, batch['image_hw'], True)
    anchors = jnp.asarray(np.concatenate(level_anchors, axis=0))
    batch_size = batch['image'].shape[0]
    rpn_keys, roi_keys = jnp.split(jax.random.split(key, 2 * batch_size), 2)

    labels, matched = jax.vmap(lambda k, gt, valid: rpn.label_and_sample_anchors(
        k, anchors, gt, valid, batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        iou_thresholds=config.rpn_iou_thresholds))(rpn_keys, batch['boxes'], batch['box_valid'])
    loss = rpn.rpn_losses(anchors, jnp.concatenate(logits, axis=1),
                          jnp.concatenate(deltas, axis=1), labels, matched,
                          batch_size_per_image=config.rpn_batch_size_per_image,
                          box_weights=config.rpn_box_weights,
                          smooth_l1_beta=config.rpn_smooth_l1_beta)

    sampled = jax.vmap(lambda k, p, pv, gt, cls, valid: roi_heads.label_and_sample_proposals(
        k, p, pv, gt, cls, valid, num_classes=config.num_classes,
        batch_size_per_image=config.roi_batch_size_per_image,
        positive_fraction=config.roi_positive_fraction,
        iou_threshold=config.roi_iou_threshold))(
            roi_keys, proposal['boxes'], proposal['valid'], batch['boxes'],
            batch['classes'], batch['box_valid'])
    rois = jax.lax.stop_gradient(sampled['boxes'])
    box_features, class_logits, box_deltas = self.box_outputs(features, rois)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    loss.update(fast_rcnn.fast_rcnn_losses(
        flat(class_logits), flat(box_deltas), flat(rois), flat(sampled['classes']),
        flat(sampled['gt_boxes']), flat(sampled['valid']), num_classes=config.num_classes,
        box_weights=config.roi_box_weights, smooth_l1_beta=config.roi_smooth_l1_beta))
    return loss, {'rois': rois, 'roi_classes': sampled['classes'],
                  'roi_valid': sampled['valid'], 'box_features': box_features,
                  'class_logits': class_logits, 'box_deltas': box_deltas,
                  'features': features}

  def detect(self, images, image_hw, output_hw=None):
    """Inference: per image 'boxes' [D, 4], 'scores' [D], 'classes' [D], 'valid' [D]
    (D = detections_per_image), score > 0.05, per-class NMS 0.5; boxes in input-image
    pixels, or rescaled to `output_hw` [B, 2] (the original image sizes) as detectron2's
    detector_postprocess does."""
    config = self.config
    features = self.features(images, image_hw)
    _, _, _, proposal = self.proposals(features, image_hw, False)
    _, class_logits, box_deltas = self.box_outputs(features, proposal['boxes'])
    batch_size, count = proposal['boxes'].shape[:2]
    predicted, scores = fast_rcnn.predict_boxes_and_scores(
        class_logits.reshape(batch_size * count, -1), box_deltas.reshape(batch_size * count, -1),
        proposal['boxes'].reshape(-1, 4), config.roi_box_weights)
    predicted = predicted.reshape(batch_size, count, -1)
    scores = scores.reshape(batch_size, count, -1)
    boxes, scores, classes, _, valid = jax.vmap(
        lambda b, s, hw, v: postprocess.fast_rcnn_inference(
            b, s, hw, valid=v, score_thresh=config.score_thresh_test,
            nms_thresh=config.nms_thresh_test, topk=config.detections_per_image))(
                predicted, scores, image_hw, proposal['valid'])
    if output_hw is not None:
      boxes, valid = jax.vmap(postprocess.detector_postprocess)(boxes, valid, image_hw, output_hw)
    return {'boxes': boxes, 'scores': scores, 'classes': classes, 'valid': valid}


BOTTOM_UP = {
    'R18': lambda freeze_at, dtype, rngs: backbones.ResNet(18, freeze_at=freeze_at,
                                                           dtype=dtype, rngs=rngs),
    'R50': lambda freeze_at, dtype, rngs: backbones.ResNet(50, freeze_at=freeze_at,
                                                           dtype=dtype, rngs=rngs),
    'R101': lambda freeze_at, dtype, rngs: backbones.ResNet(101, freeze_at=freeze_at,
                                                            dtype=dtype, rngs=rngs),
    'MV2': lambda freeze_at, dtype, rngs: backbones.MobileNetV2(freeze_at=freeze_at,
                                                                dtype=dtype, rngs=rngs),
    # Smoke runs and tests: R18 blocks at widths 8..64 (not a published network).
    'R18micro': lambda freeze_at, dtype, rngs: backbones.ResNet(
        18, stem_channels=8, res2_channels=8, freeze_at=freeze_at,
        dtype=dtype, rngs=rngs),
}
# (FPN channels, box-head width): detectron2's 256 / 1024, except the micro network's.
WIDTHS = {'R18micro': (16, 32)}


def create(backbone_name, config=DetectorConfig(), *, freeze_at=2, dtype=jnp.float32, rngs):
  """Faster R-CNN R-FPN with bottom-up 'R18', 'R50', 'R101' or 'MV2' (FREEZE_AT: detectron2
  default 2; the ND MobileNetV2 configs use 0)."""
  if backbone_name not in BOTTOM_UP:
    raise UserError(f"unknown detector backbone {backbone_name!r}; choose from "
                    f"{', '.join(BOTTOM_UP)}")
  bottom_up = BOTTOM_UP[backbone_name](freeze_at, dtype, rngs)
  fpn_channels, fc_dim = WIDTHS.get(backbone_name, (256, 1024))
  return FasterRCNN(fpn.FPN(bottom_up, fpn_channels, dtype=dtype, rngs=rngs), config,
                    fc_dim=fc_dim, dtype=dtype, rngs=rngs)


def load_weights(model, path):
  """detectron2's MODEL.WEIGHTS: a weights file (kd_jax.detection.weights: model-zoo or
  MSRA .pkl, torchvision .pth) into `model` by detectron2 name, in place. A file of the
  bottom-up network alone (ImageNet weights) starts the detector from it, as detectron2
  does; anything else must cover the whole detector."""
  state = weights.load_detectron2_weights(path)
  prefix = "backbone.bottom_up."
  if state and all(name.startswith(prefix) for name in state):
    detectron2_names.load_detectron2_state(model.backbone.bottom_up, state, prefix=prefix,
                                           source=path)
  else:
    detectron2_names.load_detectron2_state(model, state, source=path)
  return model


def save_weights(model, path, author='kd_jax'):
  """Writes `model` as a detectron2 model-zoo .pkl ({"model": {name: ndarray}, "__author__"},
  PyTorch layouts), the file load_weights and detectron2's DetectionCheckpointer read: so a
  run can start from another's detector, as detectron2's MODEL.WEIGHTS = a model_final."""
  with open(path, 'wb') as file:
    pickle.dump({'model': detectron2_names.detectron2_state(model), '__author__': author}, file)
  return path
