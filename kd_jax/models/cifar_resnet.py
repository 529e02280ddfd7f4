"""CIFAR ResNets of mdistiller (`models/cifar/resnet.py`): resnet8 ... resnet110, x4.

Post-activation basic blocks, n = (depth - 2) / 6 blocks per stage, 1x1 conv+BN
`downsample` when the shape changes, global average pool, `fc` classifier.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers


class BasicBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU; returns (out, pre-ReLU sum)."""

  def __init__(self, in_planes, planes, stride, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, padding=1, **kw)
    self.bn1 = layers.batch_norm(planes, **kw)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, **kw)
    self.bn2 = layers.batch_norm(planes, **kw)
    if stride != 1 or in_planes != planes:
      self.downsample = nnx.List([
          layers.conv(in_planes, planes, 1, stride=stride, **kw),
          layers.batch_norm(planes, **kw),
      ])
    else:
      self.downsample = None

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = self.bn2(self.conv2(out), use_running_average=ura)
    residual = x
    if self.downsample is not None:
      residual = layers.sequential(self.downsample, x, train)
    preact = out + residual
    return jax.nn.relu(preact), preact


class CifarResNet(nnx.Module):
  """conv1-bn1-ReLU, three stages (layer1..3), global average pool, fc."""

  def __init__(self, depth, widths, num_classes, *, dtype=jnp.float32, rngs):
    assert (depth - 2) % 6 == 0, 'depth must be 6n+2'
    blocks = (depth - 2) // 6
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, widths[0], 3, padding=1, **kw)
    self.bn1 = layers.batch_norm(widths[0], **kw)
    in_planes = widths[0]
    stages = []
    for stage, planes in enumerate(widths[1:]):
      stride = 1 if stage == 0 else 2
      stage_blocks = []
      for i in range(blocks):
        stage_blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, **kw))
        in_planes = planes
      stages.append(nnx.List(stage_blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.fc = layers.linear(widths[3], num_classes, **kw)

  def __call__(self, x, train):
    x = self.conv1(x.astype(self.dtype))
    x = jax.nn.relu(self.bn1(x, use_running_average=not train))
    x, stages, preacts = layers.residual_stages(
        x, (self.layer1, self.layer2, self.layer3), train)
    return layers.classify(x, self.fc, stages, preacts)

  def bn_before_relu(self):
    """The BatchNorm feeding each of preact_stages[1:] (mdistiller get_bn_before_relu)."""
    return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _factory(depth, widths):
  def make(num_classes, *, rngs, dtype=jnp.float32):
    return CifarResNet(depth, widths, num_classes, dtype=dtype, rngs=rngs)
  return make


MODELS = {
    'resnet8': (_factory(8, _SMALL), 64),
    'resnet14': (_factory(14, _SMALL), 64),
    'resnet20': (_factory(20, _SMALL), 64),
    'resnet32': (_factory(32, _SMALL), 64),
    'resnet44': (_factory(44, _SMALL), 64),
    'resnet56': (_factory(56, _SMALL), 64),
    'resnet110': (_factory(110, _SMALL), 64),
    'resnet8x4': (_factory(8, _WIDE), 256),
    'resnet32x4': (_factory(32, _WIDE), 256),
}
