"""ImageNet MobileNetV1 of CRD / mdistiller (`models/imagenet/mobilenetv1.py`).

`model` is an nn.Sequential of 14 units: a [conv3x3, BN, ReLU] stem and 13
[depthwise 3x3, BN, ReLU, 1x1, BN, ReLU] units (ReLUs hold the parameter-free slots, so
`model.1.3.weight` is the first pointwise conv); then global average pool and `fc`.
The PyTorch original hard-codes 1000 classes; here num_classes is an argument.
Stages (mdistiller) are the outputs of units 3, 5, 11, 13; 'preact_stages' before
their last ReLU. PyTorch default init.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import layers

_INIT = dict(kernel_init=layers.TORCH_DEFAULT)
# (out_channels, stride) of the 13 depthwise-separable units.
_UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
          (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_STAGE_UNITS = (3, 5, 11, 13)


def _conv_dw(in_channels, out_channels, stride, kw):
  return nnx.List([
      layers.conv(in_channels, in_channels, 3, stride=stride, padding=1,
                  groups=in_channels, **_INIT, **kw),
      layers.batch_norm(in_channels, **kw),
      jax.nn.relu,
      layers.conv(in_channels, out_channels, 1, **_INIT, **kw),
      layers.batch_norm(out_channels, **kw),
      jax.nn.relu,
  ])


class MobileNetV1(nnx.Module):
  """MobileNetV1 (width 1.0, 224x224 design; any input divisible by 32 works)."""

  def __init__(self, num_classes, *, dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.dtype = dtype
    units = [nnx.List([layers.conv(3, 32, 3, stride=2, padding=1, **_INIT, **kw),
                       layers.batch_norm(32, **kw), jax.nn.relu])]
    in_channels = 32
    for out_channels, stride in _UNITS:
      units.append(_conv_dw(in_channels, out_channels, stride, kw))
      in_channels = out_channels
    self.model = nnx.List(units)
    self.fc = layers.linear(1024, num_classes, **kw)

  def __call__(self, x, train):
    x = x.astype(self.dtype)
    stages, preacts = [], []
    for i, unit in enumerate(self.model):
      if i in _STAGE_UNITS:
        preact = layers.sequential(unit[:-1], x, train)
        x = jax.nn.relu(preact)
        preacts.append(preact)
        stages.append(x)
      else:
        x = layers.sequential(unit, x, train)
    return layers.classify(x, self.fc, stages, preacts)

  def bn_before_relu(self):
    """The pointwise BatchNorm of units 5, 11, 13, feeding preact_stages[1:]
    (mdistiller's list also has unit 3's, the stage OFD drops as feats[0])."""
    return [self.model[i][4] for i in _STAGE_UNITS[1:]]


def mobilenet_v1(num_classes, *, rngs, dtype=jnp.float32):
  return MobileNetV1(num_classes, dtype=dtype, rngs=rngs)


MODELS = {'imagenet_mobilenetv1': (mobilenet_v1, 1024)}
