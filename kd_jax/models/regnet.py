"""RegNetY in timm's layout (registered as regnety_160, DeiT's RegNetY-16GF teacher).

timm `RegNet` with `Bottleneck` blocks: stem (3x3/2 conv-BN-ReLU, 32 channels), stages
s1..s4 of blocks b1..bN: conv1 (1x1) - conv2 (3x3 grouped, the stride) - SE - conv3
(1x1, no ReLU) + shortcut (`downsample` = 1x1 conv + BN when the shape changes), then ReLU;
global average pool, `head.fc`. SE (`se.fc1`, `se.fc2`, 1x1 convs with bias) squeezes to
round(block input channels x 0.25). Each ConvNormAct is `.conv` + `.bn` as in timm's state
dict. Stage widths/depths are timm's `generate_regnet` output for the model's
(w0, wa, wm, depth, group size), written out here (tests compare them with timm's).

Features: 'pooled' after the last ReLU and global pool (what ND's class means use); 'stages'
the stem and stage outputs, 'preact_stages' the same before each stage's last ReLU.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers


class ConvNormAct(nnx.Module):
  """timm ConvNormAct: conv (no bias, symmetric padding k//2) + BN, ReLU unless told not."""

  def __init__(self, in_chs, out_chs, kernel_size, *, stride=1, groups=1, act=True,
               dtype, rngs):
    self.conv = layers.conv(in_chs, out_chs, kernel_size, stride=stride,
                            padding=kernel_size // 2, groups=groups, dtype=dtype, rngs=rngs)
    self.bn = layers.batch_norm(out_chs, dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x, train):
    x = self.bn(self.conv(x), use_running_average=not train)
    return jax.nn.relu(x) if self.act else x


class SqueezeExcite(nnx.Module):
  """timm SEModule: mean over H, W -> fc1 (1x1 conv) -> ReLU -> fc2 -> sigmoid gate."""

  def __init__(self, channels, reduced, *, dtype, rngs):
    kw = dict(bias=True, dtype=dtype, rngs=rngs)
    self.fc1 = layers.conv(channels, reduced, 1, **kw)
    self.fc2 = layers.conv(reduced, channels, 1, **kw)

  def __call__(self, x):
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = self.fc2(jax.nn.relu(self.fc1(scale)))
    return x * jax.nn.sigmoid(scale)


class Bottleneck(nnx.Module):
  """RegNet bottleneck (bottle ratio 1): SE after the grouped conv; returns the pre-ReLU sum."""

  def __init__(self, in_chs, out_chs, stride, group_size, se_ratio, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = ConvNormAct(in_chs, out_chs, 1, **kw)
    self.conv2 = ConvNormAct(out_chs, out_chs, 3, stride=stride,
                             groups=out_chs // group_size, **kw)
    self.se = SqueezeExcite(out_chs, int(round(in_chs * se_ratio)), **kw)
    self.conv3 = ConvNormAct(out_chs, out_chs, 1, act=False, **kw)
    reshapes = in_chs != out_chs or stride != 1
    self.downsample = (ConvNormAct(in_chs, out_chs, 1, stride=stride, act=False, **kw)
                       if reshapes else None)

  def __call__(self, x, train):
    out = self.conv3(self.se(self.conv2(self.conv1(x, train), train)), train)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return out + shortcut


class RegNet(nnx.Module):
  """stem, s1..s4 (blocks b1..bN), global average pool, head.fc."""

  def __init__(self, stages, num_classes, *, stem_width=32, se_ratio=0.25,
               dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.stem = ConvNormAct(3, stem_width, 3, stride=2, **kw)
    in_chs = stem_width
    self.stage_names = tuple(f's{i + 1}' for i in range(len(stages)))
    for name, (out_chs, depth, group_size) in zip(self.stage_names, stages):
      stage = nnx.Module()
      for i in range(depth):
        setattr(stage, f'b{i + 1}', Bottleneck(in_chs if i == 0 else out_chs, out_chs,
                                               2 if i == 0 else 1, group_size, se_ratio, **kw))
      stage.depth = depth
      setattr(self, name, stage)
      in_chs = out_chs
    self.head = nnx.Module()
    self.head.fc = layers.linear(in_chs, num_classes, kernel_init=layers.normal(0.01),
                                 bias_init=layers.ZEROS, **kw)

  def __call__(self, x, train):
    x = self.stem(x.astype(self.dtype), train)
    stages, preacts = [x], [x]
    for name in self.stage_names:
      stage = getattr(self, name)
      for i in range(stage.depth):
        preact = getattr(stage, f'b{i + 1}')(x, train)
        x = jax.nn.relu(preact)
      stages.append(x)
      preacts.append(preact)
    return layers.classify(x, self.head.fc, stages, preacts)


# timm generate_regnet(wa=106.23, w0=200, wm=2.48, depth=18, group_size=112): per stage
# (width, blocks, group size).
REGNETY_160 = ((224, 2, 112), (448, 4, 112), (1232, 11, 112), (3024, 1, 112))


def _factory(stages):
  def make(num_classes, *, rngs, dtype=jnp.float32):
    return RegNet(stages, num_classes, dtype=dtype, rngs=rngs)
  return make


MODELS = {
    'regnety_160': (_factory(REGNETY_160), 3024),
}
