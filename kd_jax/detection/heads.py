"""The detector's heads (METHODS.md section 13), detectron2 names and inits.

- StandardRPNHead (proposal_generator/rpn.py): shared over levels, 3x3 conv + ReLU, 1x1
  objectness_logits (A) and 1x1 anchor_deltas (4A); all N(0, 0.01), bias 0.
- FastRCNNConvFCHead (roi_heads/box_head.py) with NUM_FC 2, FC_DIM 1024: flatten, fc1 +
  ReLU, fc2 + ReLU; c2_xavier_fill, bias 0.
- FastRCNNOutputLayers (roi_heads/fast_rcnn.py): cls_score K+1 (background last,
  N(0, 0.01)) and bbox_pred 4K class-specific deltas (N(0, 0.001)), bias 0.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.detection import layers


class StandardRPNHead(nnx.Module):
  """Per level [B, H, W, C] -> objectness [B, H*W*A] and deltas [B, H*W*A, 4] in
  detectron2's anchor order (position-major, the A anchors of a cell innermost)."""

  def __init__(self, in_channels, num_anchors, box_dim=4, *, dtype=jnp.float32, rngs):
    kw = dict(bias=True, kernel_init=layers.normal(0.01), dtype=dtype, rngs=rngs)
    self.box_dim = box_dim
    self.conv = layers.Conv2d(in_channels, in_channels, 3, padding=1, activation=jax.nn.relu,
                              **kw)
    self.objectness_logits = layers.Conv2d(in_channels, num_anchors, 1, **kw)
    self.anchor_deltas = layers.Conv2d(in_channels, num_anchors * box_dim, 1, **kw)

  def __call__(self, features):
    logits, deltas = [], []
    for x in features:
      hidden = self.conv(x)
      batch = x.shape[0]
      # (N, A, Hi, Wi) -> (N, Hi*Wi*A) and (N, A*B, Hi, Wi) -> (N, Hi*Wi*A, B) in rpn.py;
      # NHWC channels are already (a, b) with b fastest, as the PyTorch view.
      logits.append(self.objectness_logits(hidden).reshape(batch, -1))
      deltas.append(self.anchor_deltas(hidden).reshape(batch, -1, self.box_dim))
    return logits, deltas


class FastRCNNConvFCHead(nnx.Module):
  """[R, 7, 7, C] pooled features -> [R, 1024] (after fc2's ReLU: ND's RoI feature)."""

  def __init__(self, in_channels, resolution=7, fc_dim=1024, *, dtype=jnp.float32, rngs):
    kw = dict(kernel_init=layers.C2_XAVIER_FILL, dtype=dtype, rngs=rngs)
    self.fc1 = layers.linear(in_channels * resolution * resolution, fc_dim, **kw)
    self.fc2 = layers.linear(fc_dim, fc_dim, **kw)

  def __call__(self, pooled):
    # nn.Flatten on NCHW: channel-major, so detectron2's fc1 weights apply unpermuted.
    x = jnp.transpose(pooled, (0, 3, 1, 2)).reshape(pooled.shape[0], -1)
    return jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x))))


class FastRCNNOutputLayers(nnx.Module):
  """[R, d] -> (class logits [R, K+1], class-specific deltas [R, 4K])."""

  def __init__(self, in_features, num_classes, box_dim=4, *, dtype=jnp.float32, rngs):
    self.cls_score = layers.linear(in_features, num_classes + 1,
                                   kernel_init=layers.normal(0.01), dtype=dtype, rngs=rngs)
    self.bbox_pred = layers.linear(in_features, num_classes * box_dim,
                                   kernel_init=layers.normal(0.001), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.cls_score(x), self.bbox_pred(x)
