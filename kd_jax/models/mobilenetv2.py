"""CIFAR MobileNetV2 of mdistiller (`models/cifar/mobilenetv2.py`, `mobile_half`).

Width 0.5, expansion 6, a stride-2 first conv, seven stages of inverted residuals
(`blocks.i.j.conv.k`), a 1x1 conv to 1280 (`conv2`) and `classifier.0` Linear.
Every nn.Sequential is an nnx.List with ReLUs in the parameter-free slots.
The stage outputs end in a BN without ReLU, so 'preact_stages' equals 'stages'.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers

# (expansion t, channels c, blocks n, first stride s) before the width multiplier;
# t None means the model's expansion argument (mdistiller's T).
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
_STAGE_BLOCKS = (1, 2, 4, 6)  # stages end after these blocks (mdistiller's feats)
_CLASSIFIER_INIT = dict(kernel_init=layers.normal(0.01), bias_init=layers.ZEROS)


def _conv_bn_relu(in_channels, out_channels, kernel_size, stride, kw):
  return nnx.List([
      layers.conv(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, **kw),
      layers.batch_norm(out_channels, **kw),
      jax.nn.relu,
  ])


class InvertedResidual(nnx.Module):
  """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when shapes match."""

  def __init__(self, in_channels, out_channels, stride, expansion, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    hidden = in_channels * expansion
    self.use_residual = stride == 1 and in_channels == out_channels
    self.conv = nnx.List([
        layers.conv(in_channels, hidden, 1, **kw),
        layers.batch_norm(hidden, **kw),
        jax.nn.relu,
        layers.conv(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, **kw),
        layers.batch_norm(hidden, **kw),
        jax.nn.relu,
        layers.conv(hidden, out_channels, 1, **kw),
        layers.batch_norm(out_channels, **kw),
    ])

  def __call__(self, x, train):
    out = layers.sequential(self.conv, x, train)
    return x + out if self.use_residual else out


class MobileNetV2(nnx.Module):
  """MobileNetV2 for 32x32 inputs; stages after blocks 1, 2, 4 and 6 (mdistiller)."""

  def __init__(self, expansion, width_mult, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    in_channels = int(32 * width_mult)
    self.conv1 = _conv_bn_relu(3, in_channels, 3, 2, kw)
    stages = []
    for t, c, n, s in _SETTING:
      t = expansion if t is None else t
      out_channels = int(c * width_mult)
      stage = []
      for i in range(n):
        stride = s if i == 0 else 1
        stage.append(InvertedResidual(in_channels, out_channels, stride, t, **kw))
        in_channels = out_channels
      stages.append(nnx.List(stage))
    self.blocks = nnx.List(stages)
    last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = _conv_bn_relu(in_channels, last_channels, 1, 1, kw)
    self.classifier = nnx.List([
        layers.linear(last_channels, num_classes, **_CLASSIFIER_INIT, **kw)])

  def __call__(self, x, train):
    x = layers.sequential(self.conv1, x.astype(self.dtype), train)
    stages = [x]
    for i, stage in enumerate(self.blocks):
      for block in stage:
        x = block(x, train)
      if i in _STAGE_BLOCKS:
        stages.append(x)
    x = layers.sequential(self.conv2, x, train)
    return layers.classify(x, self.classifier[0], stages, stages)

  def bn_before_relu(self):
    """The last BatchNorm of the stage-ending blocks 1, 2, 4, 6 (mdistiller
    get_bn_before_relu; no ReLU follows them in this network)."""
    return [self.blocks[i][-1].conv[-1] for i in _STAGE_BLOCKS]


def mobile_half(num_classes, *, rngs, dtype=jnp.float32):
  """mdistiller's `mobile_half`: expansion 6, width 0.5."""
  return MobileNetV2(6, 0.5, num_classes, dtype=dtype, rngs=rngs)


MODELS = {'MobileNetV2': (mobile_half, 1280)}
