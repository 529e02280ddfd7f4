"""CIFAR ResNet18/ResNet50 of mdistiller (`models/cifar/resnetv2.py`).

The CIFAR-stem ResNet (3x3 conv1, no max-pool), widths 64..512, `shortcut` as the
projection name and `linear` as the classifier. ResNet50 is the bottleneck teacher.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers


class BasicBlock(nnx.Module):
  """Two 3x3 convs; returns (out, pre-ReLU sum)."""
  expansion = 1

  def __init__(self, in_planes, planes, stride, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, padding=1, **kw)
    self.bn1 = layers.batch_norm(planes, **kw)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, **kw)
    self.bn2 = layers.batch_norm(planes, **kw)
    self.shortcut = layers.projection(in_planes, planes, stride, kw)

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = self.bn2(self.conv2(out), use_running_average=ura)
    residual = x
    if self.shortcut is not None:
      residual = layers.sequential(self.shortcut, x, train)
    preact = out + residual
    return jax.nn.relu(preact), preact


class Bottleneck(nnx.Module):
  """1x1 - 3x3 (strided) - 1x1 x4; returns (out, pre-ReLU sum)."""
  expansion = 4

  def __init__(self, in_planes, planes, stride, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    out_planes = planes * self.expansion
    self.conv1 = layers.conv(in_planes, planes, 1, **kw)
    self.bn1 = layers.batch_norm(planes, **kw)
    self.conv2 = layers.conv(planes, planes, 3, stride=stride, padding=1, **kw)
    self.bn2 = layers.batch_norm(planes, **kw)
    self.conv3 = layers.conv(planes, out_planes, 1, **kw)
    self.bn3 = layers.batch_norm(out_planes, **kw)
    self.shortcut = layers.projection(in_planes, out_planes, stride, kw)

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
    out = self.bn3(self.conv3(out), use_running_average=ura)
    residual = x
    if self.shortcut is not None:
      residual = layers.sequential(self.shortcut, x, train)
    preact = out + residual
    return jax.nn.relu(preact), preact


class ResNetV2(nnx.Module):
  """conv1-bn1-ReLU, layer1..4 (strides 1,2,2,2), global average pool, linear."""

  def __init__(self, block, num_blocks, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, 64, 3, padding=1, **kw)
    self.bn1 = layers.batch_norm(64, **kw)
    in_planes = 64
    stages = []
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      stage_blocks = []
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        stage_blocks.append(block(in_planes, planes, stride, **kw))
        in_planes = planes * block.expansion
      stages.append(nnx.List(stage_blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.linear = layers.linear(512 * block.expansion, num_classes, **kw)

  def __call__(self, x, train):
    x = self.conv1(x.astype(self.dtype))
    x = jax.nn.relu(self.bn1(x, use_running_average=not train))
    x, stages, preacts = layers.residual_stages(
        x, (self.layer1, self.layer2, self.layer3, self.layer4), train)
    return layers.classify(x, self.linear, stages, preacts)

  def bn_before_relu(self):
    """The BatchNorm feeding each of preact_stages[1:] (mdistiller get_bn_before_relu):
    the last block's bn3 (bottleneck) or bn2 (basic block) of each stage."""
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2
            for stage in stages]


def resnet18(num_classes, *, rngs, dtype=jnp.float32):
  return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, dtype=dtype, rngs=rngs)


def resnet50(num_classes, *, rngs, dtype=jnp.float32):
  return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, dtype=dtype, rngs=rngs)


MODELS = {
    'ResNet18': (resnet18, 512),
    'ResNet50': (resnet50, 2048),
}
