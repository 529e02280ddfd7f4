"""CIFAR ShuffleNetV1 of mdistiller (`models/cifar/ShuffleNetv1.py`, `ShuffleV1`).

Groups 3, widths [240, 480, 960], blocks [4, 8, 4]; 1x1 stem to 24 channels. The first
block of each stage has stride 2 and concatenates a 3x3/2 average-pooled shortcut
(count_include_pad, as nn.AvgPool2d); the rest add an identity. PyTorch default init.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers

_INIT = dict(kernel_init=layers.TORCH_DEFAULT)


class Bottleneck(nnx.Module):
  """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; returns (out, preact)."""

  def __init__(self, in_planes, out_planes, stride, groups, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs, **_INIT)
    bn_kw = dict(dtype=dtype, rngs=rngs)
    mid_planes = out_planes // 4
    self.stride = stride
    self.first_groups = 1 if in_planes == 24 else groups
    self.conv1 = layers.conv(in_planes, mid_planes, 1, groups=self.first_groups, **kw)
    self.bn1 = layers.batch_norm(mid_planes, **bn_kw)
    self.conv2 = layers.conv(mid_planes, mid_planes, 3, stride=stride, padding=1,
                             groups=mid_planes, **kw)
    self.bn2 = layers.batch_norm(mid_planes, **bn_kw)
    self.conv3 = layers.conv(mid_planes, out_planes, 1, groups=groups, **kw)
    self.bn3 = layers.batch_norm(out_planes, **bn_kw)

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = layers.channel_shuffle(out, self.first_groups)
    out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
    out = self.bn3(self.conv3(out), use_running_average=ura)
    if self.stride == 2:
      preact = jnp.concatenate([out, layers.avg_pool(x, 3, 2, 1)], axis=-1)
    else:
      preact = out + x
    return jax.nn.relu(preact), preact


class ShuffleNetV1(nnx.Module):
  """conv1-bn1-ReLU, layer1..3, global average pool, linear."""

  def __init__(self, widths, num_blocks, groups, num_classes, *, dtype=jnp.float32,
               rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, 24, 1, **_INIT, **kw)
    self.bn1 = layers.batch_norm(24, **kw)
    in_planes = 24
    stages = []
    for width, count in zip(widths, num_blocks):
      stage = []
      for i in range(count):
        # The first block concatenates its input, so its branch makes the rest.
        branch = width - in_planes if i == 0 else width
        stage.append(Bottleneck(in_planes, branch, 2 if i == 0 else 1, groups, **kw))
        in_planes = width
      stages.append(nnx.List(stage))
    self.layer1, self.layer2, self.layer3 = stages
    self.linear = layers.linear(widths[-1], num_classes, **kw)

  def __call__(self, x, train):
    x = self.conv1(x.astype(self.dtype))
    x = jax.nn.relu(self.bn1(x, use_running_average=not train))
    x, stages, preacts = layers.residual_stages(
        x, (self.layer1, self.layer2, self.layer3), train)
    return layers.classify(x, self.linear, stages, preacts)

  def bn_before_relu(self):
    """bn3 of each stage's last block, whose output plus the identity is preact_stages[1:].

    mdistiller raises here (no OFD teacher); this is the ResNets' choice, the BatchNorm
    on the residual branch.
    """
    return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3)]


def shuffle_v1(num_classes, *, rngs, dtype=jnp.float32):
  return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, dtype=dtype, rngs=rngs)


MODELS = {'ShuffleV1': (shuffle_v1, 960)}
