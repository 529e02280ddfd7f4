"""CIFAR VGGs of mdistiller (`models/cifar/vgg.py`, the `_bn` variants): vgg8..vgg19.

Five blocks (`block0`..`block4`), each an nn.Sequential of [conv(bias), BN, ReLU, ...]
with the trailing ReLU dropped, so list indices match the state dict (`block1.0` conv,
`block1.1` BN, `block1.3` conv, ...; ReLUs hold the parameter-free slots). Max-pool
after blocks 0-2, after block 3 only for 64x64 inputs (as mdistiller), then global
average pool and a 512 -> C `classifier`.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers

_CONFIGS = {
    'vgg8': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(in_channels, widths, kw):
  """[conv, BN, ReLU] per width, minus the final ReLU (applied by the caller)."""
  items = []
  for width in widths:
    items += [layers.conv(in_channels, width, 3, padding=1, bias=True, **kw),
              layers.batch_norm(width, **kw), jax.nn.relu]
    in_channels = width
  return nnx.List(items[:-1])


class VGG(nnx.Module):
  """VGG with BatchNorm; returns features after every block."""

  def __init__(self, config, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    in_channels = 3
    blocks = []
    for widths in config:
      blocks.append(_block(in_channels, widths, kw))
      in_channels = widths[-1]
    self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
    self.classifier = layers.linear(
        512, num_classes, kernel_init=layers.normal(0.01), bias_init=layers.ZEROS, **kw)

  def __call__(self, x, train):
    height = x.shape[1]
    x = jax.nn.relu(layers.sequential(self.block0, x.astype(self.dtype), train))
    stages, preacts = [x], [x]
    blocks = (self.block1, self.block2, self.block3, self.block4)
    for i, block in enumerate(blocks):
      if i < 3 or height == 64:  # pool0..pool2 always, pool3 for 64x64 inputs
        x = layers.max_pool(x, 2, 2)
      preact = layers.sequential(block, x, train)
      x = jax.nn.relu(preact)
      stages.append(x)
      preacts.append(preact)
    return layers.classify(x, self.classifier, stages, preacts)

  def bn_before_relu(self):
    """The last BatchNorm of block1..4, making preact_stages[1:] (mdistiller)."""
    return [block[-1] for block in (self.block1, self.block2, self.block3, self.block4)]


def _factory(config):
  def make(num_classes, *, rngs, dtype=jnp.float32):
    return VGG(config, num_classes, dtype=dtype, rngs=rngs)
  return make


MODELS = {name: (_factory(config), 512) for name, config in _CONFIGS.items()}
