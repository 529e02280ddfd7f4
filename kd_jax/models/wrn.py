"""Wide ResNets of mdistiller (`models/cifar/wrn.py`): wrn_16_1/16_2/40_1/40_2.

Pre-activation blocks, depth 6n+4, widths [16, 16k, 32k, 64k], final bn1+ReLU before
the pool; dropout is 0 in mdistiller and omitted. Names follow the PyTorch state dict,
including the camel-case `convShortcut` and `block1.layer.0...`.

Stage pre-activations are bn1 of the next stage's first block applied to the stage
output (as mdistiller reports them). mdistiller calls that BN a second time for the
report, updating its running stats twice per training step; here it runs once and the
block reuses the result, so running stats follow the ordinary single update.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers


class BasicBlock(nnx.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity or 1x1 `convShortcut`."""

  def __init__(self, in_planes, out_planes, stride, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(in_planes, **kw)
    self.conv1 = layers.conv(in_planes, out_planes, 3, stride=stride, padding=1, **kw)
    self.bn2 = layers.batch_norm(out_planes, **kw)
    self.conv2 = layers.conv(out_planes, out_planes, 3, padding=1, **kw)
    self.equal_in_out = in_planes == out_planes
    if self.equal_in_out:
      self.convShortcut = None  # pylint: disable=invalid-name
    else:
      self.convShortcut = layers.conv(  # pylint: disable=invalid-name
          in_planes, out_planes, 1, stride=stride, **kw)

  def __call__(self, x, train, preact=None):
    """`preact` is bn1(x) when the caller already computed it."""
    if preact is None:
      preact = self.bn1(x, use_running_average=not train)
    act = jax.nn.relu(preact)
    out = jax.nn.relu(self.bn2(self.conv1(act), use_running_average=not train))
    out = self.conv2(out)
    # mdistiller: with a projection the shortcut sees the activated input.
    shortcut = x if self.equal_in_out else self.convShortcut(act)
    return shortcut + out


class NetworkBlock(nnx.Module):
  """One stage: `layer` is the list of blocks (nn.Sequential in PyTorch)."""

  def __init__(self, count, in_planes, out_planes, stride, *, dtype, rngs):
    self.layer = nnx.List([
        BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                   stride if i == 0 else 1, dtype=dtype, rngs=rngs)
        for i in range(count)
    ])

  def __call__(self, x, train, first_preact=None):
    for i, block in enumerate(self.layer):
      x = block(x, train, first_preact if i == 0 else None)
    return x


class WideResNet(nnx.Module):
  """conv1, block1..3, bn1+ReLU, global average pool, fc."""

  def __init__(self, depth, widen_factor, num_classes, *, dtype=jnp.float32, rngs):
    assert (depth - 4) % 6 == 0, 'depth must be 6n+4'
    count = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    self.conv1 = layers.conv(3, widths[0], 3, padding=1, **kw)
    self.block1 = NetworkBlock(count, widths[0], widths[1], 1, **kw)
    self.block2 = NetworkBlock(count, widths[1], widths[2], 2, **kw)
    self.block3 = NetworkBlock(count, widths[2], widths[3], 2, **kw)
    self.bn1 = layers.batch_norm(widths[3], **kw)
    self.fc = layers.linear(widths[3], num_classes, bias_init=layers.ZEROS, **kw)

  def __call__(self, x, train):
    ura = not train
    f0 = self.conv1(x.astype(self.dtype))
    f1 = self.block1(f0, train)
    p1 = self.block2.layer[0].bn1(f1, use_running_average=ura)
    f2 = self.block2(f1, train, first_preact=p1)
    p2 = self.block3.layer[0].bn1(f2, use_running_average=ura)
    f3 = self.block3(f2, train, first_preact=p2)
    p3 = self.bn1(f3, use_running_average=ura)
    return layers.classify(jax.nn.relu(p3), self.fc, (f0, f1, f2, f3), (f0, p1, p2, p3))

  def bn_before_relu(self):
    """The BatchNorms that make preact_stages[1:] (mdistiller get_bn_before_relu)."""
    return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


def _factory(depth, widen_factor):
  def make(num_classes, *, rngs, dtype=jnp.float32):
    return WideResNet(depth, widen_factor, num_classes, dtype=dtype, rngs=rngs)
  return make


MODELS = {
    'wrn_16_1': (_factory(16, 1), 64),
    'wrn_16_2': (_factory(16, 2), 128),
    'wrn_40_1': (_factory(40, 1), 64),
    'wrn_40_2': (_factory(40, 2), 128),
}
