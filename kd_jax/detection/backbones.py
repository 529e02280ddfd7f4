"""Bottom-up backbones of the detectors (METHODS.md section 13), NHWC, FrozenBN everywhere.

- detectron2 modeling/backbone/resnet.py ResNet (build_resnet_backbone; the ND repository's
  build_resnet_backbone_kd adds depth 18 with the same blocks): BasicStem, BasicBlock for
  R18/R34 (RES2_OUT_CHANNELS 64), BottleneckBlock for R50/R101 with the stride in the 1x1
  conv (STRIDE_IN_1X1, the MSRA weights). Outputs res2..res5.
- The ND repository's Detection/model/backbone/mobilenetv2.py: `features` = a 3x3/2
  conv-norm-ReLU6 stem and 17 inverted residuals; outputs m2, m3, m4, m5 (strides 4..32).

Module and attribute names are detectron2's state-dict names (`stem.conv1.norm`,
`res2.0.shortcut`, `features.3.conv.4`), so detectron2_names.py maps them mechanically.
FREEZE_AT freezes (layers.freeze) the stem (>= 1) and the first FREEZE_AT - 1 stages.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.detection import layers

RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                 152: (3, 8, 36, 3)}


def _conv_norm(in_channels, out_channels, kernel_size, *, stride=1, padding=0,
               activation=None, kw):
  return layers.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                       padding=padding, norm=layers.FrozenBatchNorm2d(out_channels),
                       activation=activation, **kw)


class BasicStem(nnx.Module):
  """conv1 7x7/2 + FrozenBN + ReLU, then max-pool 3x3/2 (stride 4)."""

  def __init__(self, in_channels, out_channels, *, kw):
    self.conv1 = _conv_norm(in_channels, out_channels, 7, stride=2, padding=3,
                            activation=jax.nn.relu, kw=kw)

  def __call__(self, x):
    return layers.max_pool(self.conv1(x), 3, 2, 1)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (stride on the first) + projection shortcut when channels change."""

  def __init__(self, in_channels, out_channels, stride, *, kw):
    self.shortcut = (_conv_norm(in_channels, out_channels, 1, stride=stride, kw=kw)
                     if in_channels != out_channels else None)
    self.conv1 = _conv_norm(in_channels, out_channels, 3, stride=stride, padding=1,
                            activation=jax.nn.relu, kw=kw)
    self.conv2 = _conv_norm(out_channels, out_channels, 3, padding=1, kw=kw)

  def __call__(self, x):
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return jax.nn.relu(self.conv2(self.conv1(x)) + shortcut)


class BottleneckBlock(nnx.Module):
  """1x1 - 3x3 - 1x1 with the stride on the 1x1 (stride_in_1x1) or on the 3x3."""

  def __init__(self, in_channels, out_channels, bottleneck_channels, stride, stride_in_1x1,
               *, kw):
    self.shortcut = (_conv_norm(in_channels, out_channels, 1, stride=stride, kw=kw)
                     if in_channels != out_channels else None)
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = _conv_norm(in_channels, bottleneck_channels, 1, stride=stride_1x1,
                            activation=jax.nn.relu, kw=kw)
    self.conv2 = _conv_norm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3,
                            padding=1, activation=jax.nn.relu, kw=kw)
    self.conv3 = _conv_norm(bottleneck_channels, out_channels, 1, kw=kw)

  def __call__(self, x):
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return jax.nn.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class ResNet(nnx.Module):
  """detectron2 ResNet with out_features res2..res5.

  depth 18/34: BasicBlock, res2_channels must be 64 (scaled down only for tests);
  depth >= 50: BottleneckBlock, bottleneck width `width_per_group` in res2, doubling.
  """

  def __init__(self, depth, *, stem_channels=64, res2_channels=None, width_per_group=64,
               stride_in_1x1=True, freeze_at=2, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    basic = depth < 50
    out_channels = res2_channels or (64 if basic else 256)
    bottleneck_channels = width_per_group
    in_channels = stem_channels
    self.stem = BasicStem(3, stem_channels, kw=kw)
    self.stage_names = ('res2', 'res3', 'res4', 'res5')
    channels = []
    for index, (name, count) in enumerate(zip(self.stage_names, RESNET_BLOCKS[depth])):
      blocks = []
      for i in range(count):
        stride = 2 if index > 0 and i == 0 else 1
        if basic:
          blocks.append(BasicBlock(in_channels, out_channels, stride, kw=kw))
        else:
          blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck_channels,
                                        stride, stride_in_1x1, kw=kw))
        in_channels = out_channels
      setattr(self, name, nnx.List(blocks))
      channels.append(out_channels)
      out_channels *= 2
      bottleneck_channels *= 2
    self.out_channels = tuple(channels)
    self.strides = (4, 8, 16, 32)
    if freeze_at >= 1:
      layers.freeze(self.stem)
    for stage_index, name in enumerate(self.stage_names, start=2):
      if freeze_at >= stage_index:
        layers.freeze(getattr(self, name))

  def __call__(self, x):
    """[B, H, W, 3] -> [res2, res3, res4, res5] feature maps (strides 4, 8, 16, 32)."""
    x = self.stem(x.astype(self.dtype))
    outputs = []
    for name in self.stage_names:
      for block in getattr(self, name):
        x = block(x)
      outputs.append(x)
    return outputs


# (expansion t, channels c, blocks n, first stride s, output name) as the ND repository.
_MOBILENETV2_SETTING = ((1, 16, 1, 1, ''), (6, 24, 2, 2, 'm2'), (6, 32, 3, 2, 'm3'),
                        (6, 64, 4, 2, ''), (6, 96, 3, 1, 'm4'), (6, 160, 3, 2, ''),
                        (6, 320, 1, 1, 'm5'))


def _relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def _plain_conv(in_channels, out_channels, kernel_size, stride=1, groups=1, *, kw):
  """nn.Conv2d(bias=False) with the ND MobileNetV2 init N(0, 2/(k*k*out))."""
  return layers.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                       padding=kernel_size // 2, groups=groups, **kw)


class InvertedResidual(nnx.Module):
  """`conv` = [(pw, norm, ReLU6,) dw, norm, ReLU6, pw-linear, norm]; residual when the
  shape is kept. Parameter-free slots (ReLU6) stay in the list so indices match."""

  def __init__(self, in_channels, out_channels, stride, expand_ratio, *, kw):
    hidden = round(in_channels * expand_ratio)
    self.identity = stride == 1 and in_channels == out_channels
    expand = [] if expand_ratio == 1 else [
        _plain_conv(in_channels, hidden, 1, kw=kw), layers.FrozenBatchNorm2d(hidden), _relu6]
    self.conv = nnx.List(expand + [
        _plain_conv(hidden, hidden, 3, stride, groups=hidden, kw=kw),
        layers.FrozenBatchNorm2d(hidden), _relu6,
        _plain_conv(hidden, out_channels, 1, kw=kw), layers.FrozenBatchNorm2d(out_channels)])

  def __call__(self, x):
    out = x
    for layer in self.conv:
      out = layer(out)
    return x + out if self.identity else out


class MobileNetV2(nnx.Module):
  """The ND repository's detection MobileNetV2 (width 1.0, norm FrozenBN): outputs m2..m5.

  FREEZE_AT as that file: >= 1 freezes features.0; stage counting starts at 2 and moves on
  after each named output, so FREEZE_AT 2 also freezes blocks 1..3 (up to m2). The ND
  configs use FREEZE_AT 0.
  """

  def __init__(self, *, width_mult=1.0, freeze_at=0, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    divisor = 4 if width_mult == 0.1 else 8
    in_channels = layers.make_divisible(32 * width_mult, divisor)
    stem = nnx.List([_plain_conv(3, in_channels, 3, 2, kw=kw),
                     layers.FrozenBatchNorm2d(in_channels), _relu6])
    if freeze_at >= 1:
      layers.freeze(stem)
    features, outputs, channels = [stem], [], []
    stage = 2
    for t, c, n, s, name in _MOBILENETV2_SETTING:
      out_channels = layers.make_divisible(c * width_mult, divisor)
      for i in range(n):
        block = InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t, kw=kw)
        if stage <= freeze_at:
          layers.freeze(block)
        features.append(block)
        in_channels = out_channels
      if name:
        outputs.append(len(features) - 1)
        channels.append(out_channels)
        stage += 1
    self.features = nnx.List(features)
    self.output_indices = tuple(outputs)
    self.out_channels = tuple(channels)
    self.strides = (4, 8, 16, 32)

  def __call__(self, x):
    """[B, H, W, 3] -> [m2, m3, m4, m5] feature maps (strides 4, 8, 16, 32)."""
    x = x.astype(self.dtype)
    outputs = []
    for index, layer in enumerate(self.features):
      if index == 0:
        for stem_layer in layer:
          x = stem_layer(x)
      else:
        x = layer(x)
      if index in self.output_indices:
        outputs.append(x)
    return outputs
