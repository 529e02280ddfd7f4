"""CIFAR ShuffleNetV2 of mdistiller (`models/cifar/ShuffleNetv2.py`, `ShuffleV2`).

Widths (116, 232, 464, 1024), blocks (3, 7, 3); 1x1 stem to 24 channels. Each stage is
a DownBlock (index 0) followed by BasicBlocks; a final 1x1 conv2+bn2 to 1024, global
average pool and `linear`. PyTorch default init.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.errors import UserError
from kd_jax.models import layers

_INIT = dict(kernel_init=layers.TORCH_DEFAULT)


class BasicBlock(nnx.Module):
  """Split channels in half, transform the second half, concat, shuffle."""

  def __init__(self, channels, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    half = channels // 2
    self.conv1 = layers.conv(half, half, 1, **_INIT, **kw)
    self.bn1 = layers.batch_norm(half, **kw)
    self.conv2 = layers.conv(half, half, 3, padding=1, groups=half, **_INIT, **kw)
    self.bn2 = layers.batch_norm(half, **kw)
    self.conv3 = layers.conv(half, half, 1, **_INIT, **kw)
    self.bn3 = layers.batch_norm(half, **kw)

  def __call__(self, x, train):
    """Returns (out, preact); preact is the unshuffled concat before the last ReLU."""
    ura = not train
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = jax.nn.relu(self.bn1(self.conv1(x2), use_running_average=ura))
    out = self.bn2(self.conv2(out), use_running_average=ura)
    pre = self.bn3(self.conv3(out), use_running_average=ura)
    out = jnp.concatenate([x1, jax.nn.relu(pre)], axis=-1)
    return layers.channel_shuffle(out, 2), jnp.concatenate([x1, pre], axis=-1)


class DownBlock(nnx.Module):
  """Two stride-2 branches (depthwise-then-1x1 and 1x1-depthwise-1x1), concat, shuffle."""

  def __init__(self, in_channels, out_channels, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    mid = out_channels // 2
    self.conv1 = layers.conv(in_channels, in_channels, 3, stride=2, padding=1,
                             groups=in_channels, **_INIT, **kw)
    self.bn1 = layers.batch_norm(in_channels, **kw)
    self.conv2 = layers.conv(in_channels, mid, 1, **_INIT, **kw)
    self.bn2 = layers.batch_norm(mid, **kw)
    self.conv3 = layers.conv(in_channels, mid, 1, **_INIT, **kw)
    self.bn3 = layers.batch_norm(mid, **kw)
    self.conv4 = layers.conv(mid, mid, 3, stride=2, padding=1, groups=mid, **_INIT, **kw)
    self.bn4 = layers.batch_norm(mid, **kw)
    self.conv5 = layers.conv(mid, mid, 1, **_INIT, **kw)
    self.bn5 = layers.batch_norm(mid, **kw)

  def __call__(self, x, train):
    ura = not train
    left = self.bn1(self.conv1(x), use_running_average=ura)
    left = jax.nn.relu(self.bn2(self.conv2(left), use_running_average=ura))
    right = jax.nn.relu(self.bn3(self.conv3(x), use_running_average=ura))
    right = self.bn4(self.conv4(right), use_running_average=ura)
    right = jax.nn.relu(self.bn5(self.conv5(right), use_running_average=ura))
    return layers.channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nnx.Module):
  """conv1-bn1-ReLU, layer1..3, conv2-bn2-ReLU, global average pool, linear."""

  def __init__(self, widths, num_blocks, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, 24, 1, **_INIT, **kw)
    self.bn1 = layers.batch_norm(24, **kw)
    in_channels = 24
    stages = []
    for width, count in zip(widths[:3], num_blocks):
      stage = [DownBlock(in_channels, width, **kw)]
      stage += [BasicBlock(width, **kw) for _ in range(count)]
      stages.append(nnx.List(stage))
      in_channels = width
    self.layer1, self.layer2, self.layer3 = stages
    self.conv2 = layers.conv(widths[2], widths[3], 1, **_INIT, **kw)
    self.bn2 = layers.batch_norm(widths[3], **kw)
    self.linear = layers.linear(widths[3], num_classes, **kw)

  def __call__(self, x, train):
    ura = not train
    x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype)), use_running_average=ura))
    stages, preacts = [x], [x]
    for stage in (self.layer1, self.layer2, self.layer3):
      x = stage[0](x, train)
      for block in stage[1:]:
        x, preact = block(x, train)
      stages.append(x)
      preacts.append(preact)
    x = jax.nn.relu(self.bn2(self.conv2(x), use_running_average=ura))
    return layers.classify(x, self.linear, stages, preacts)

  def bn_before_relu(self):
    """None exists: half of each preact stage is the untouched (post-ReLU) split. As in
    mdistiller, ShuffleV2 cannot be an OFD teacher."""
    raise UserError("ShuffleV2 has no BatchNorm before the last ReLU of its stages (half "
                    "of each stage bypasses it), so it cannot be an OFD teacher (as in "
                    "mdistiller)")


def shuffle_v2(num_classes, *, rngs, dtype=jnp.float32):
  return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, dtype=dtype,
                      rngs=rngs)


MODELS = {'ShuffleV2': (shuffle_v2, 1024)}
