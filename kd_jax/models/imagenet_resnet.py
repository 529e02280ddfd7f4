"""ImageNet ResNet18/34/50 in torchvision's layout (registered as imagenet_resnet*).

7x7/2 stem, 3x3/2 max-pool, layer1..4 with `downsample` = [1x1 conv, BN], stride on
the 3x3 conv of a bottleneck (torchvision v1.5), global average pool, `fc`.
Features follow mdistiller's ImageNet ResNet: 'preact_stages' are the stem BN output
and the block outputs before their final ReLU; 'stages' are the same after ReLU.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers


class BasicBlock(nnx.Module):
  """Two 3x3 convs plus shortcut; returns the sum before the final ReLU."""
  expansion = 1

  def __init__(self, in_planes, planes, stride, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, padding=1, **kw)
    self.bn1 = layers.batch_norm(planes, **kw)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, **kw)
    self.bn2 = layers.batch_norm(planes, **kw)
    self.downsample = layers.projection(in_planes, planes, stride, kw)

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = self.bn2(self.conv2(out), use_running_average=ura)
    if self.downsample is not None:
      x = layers.sequential(self.downsample, x, train)
    return out + x


class Bottleneck(nnx.Module):
  """1x1 - 3x3 (strided) - 1x1 x4 plus shortcut; returns the sum before the ReLU."""
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
    self.downsample = layers.projection(in_planes, out_planes, stride, kw)

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
    out = self.bn3(self.conv3(out), use_running_average=ura)
    if self.downsample is not None:
      x = layers.sequential(self.downsample, x, train)
    return out + x


class ImageNetResNet(nnx.Module):
  """torchvision ResNet: conv1-bn1-ReLU-maxpool, layer1..4, global average pool, fc."""

  def __init__(self, block, num_blocks, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, 64, 7, stride=2, padding=3, **kw)
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
    self.fc = layers.linear(512 * block.expansion, num_classes, **kw)

  def __call__(self, x, train):
    stem = self.bn1(self.conv1(x.astype(self.dtype)), use_running_average=not train)
    x = jax.nn.relu(stem)
    preacts, stages = [stem], [x]
    x = layers.max_pool(x, 3, 2, 1)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        preact = block(x, train)
        x = jax.nn.relu(preact)
      preacts.append(preact)
      stages.append(x)
    return layers.classify(x, self.fc, stages, preacts)

  def bn_before_relu(self):
    """The last block's bn2 (basic) or bn3 (bottleneck) of layer1..4, feeding
    preact_stages[1:]. mdistiller lists layer2..4 only; OFD aligns on the last stages."""
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2
            for stage in stages]


def _factory(block, num_blocks):
  def make(num_classes, *, rngs, dtype=jnp.float32):
    return ImageNetResNet(block, num_blocks, num_classes, dtype=dtype, rngs=rngs)
  return make


MODELS = {
    'imagenet_resnet18': (_factory(BasicBlock, (2, 2, 2, 2)), 512),
    'imagenet_resnet34': (_factory(BasicBlock, (3, 4, 6, 3)), 512),
    'imagenet_resnet50': (_factory(Bottleneck, (3, 4, 6, 3)), 2048),
}
