"""detectron2 modeling/backbone/fpn.py FPN with LastLevelMaxPool: p2..p6 (METHODS.md 13).

fpn_lateral{2..5}: 1x1 conv with bias; fpn_output{2..5}: 3x3 conv with bias (both
c2_xavier_fill, norm ""); top-down: nearest x2 upsampling + lateral, fuse "sum";
p6 = max_pool2d(p5, kernel 1, stride 2). Inputs must be a multiple of 32 (size_divisibility
= the largest stride) so every upsampled map lines up with its lateral exactly.
"""
import jax.numpy as jnp
from flax import nnx

from kd_jax.detection import layers


def upsample_nearest_2x(x):
  """F.interpolate(scale_factor=2.0, mode='nearest') on NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FPN(nnx.Module):
  """`bottom_up` (ResNet or MobileNetV2) + the pyramid; attribute names as detectron2."""

  def __init__(self, bottom_up, out_channels=256, *, dtype=jnp.float32, rngs):
    self.bottom_up = bottom_up
    self.levels = tuple(int(stride).bit_length() - 1 for stride in bottom_up.strides)
    for level, in_channels in zip(self.levels, bottom_up.out_channels):
      setattr(self, f'fpn_lateral{level}', layers.Conv2d(
          in_channels, out_channels, 1, bias=True, kernel_init=layers.C2_XAVIER_FILL,
          dtype=dtype, rngs=rngs))
      setattr(self, f'fpn_output{level}', layers.Conv2d(
          out_channels, out_channels, 3, padding=1, bias=True,
          kernel_init=layers.C2_XAVIER_FILL, dtype=dtype, rngs=rngs))
    self.out_channels = out_channels
    self.strides = tuple(bottom_up.strides) + (2 * bottom_up.strides[-1],)
    self.size_divisibility = bottom_up.strides[-1]

  def __call__(self, images):
    """[B, H, W, 3] (H, W multiples of 32) -> [p2, p3, p4, p5, p6]."""
    bottom_up = self.bottom_up(images)
    prev = getattr(self, f'fpn_lateral{self.levels[-1]}')(bottom_up[-1])
    results = [getattr(self, f'fpn_output{self.levels[-1]}')(prev)]
    for level, features in zip(self.levels[-2::-1], bottom_up[-2::-1]):
      prev = getattr(self, f'fpn_lateral{level}')(features) + upsample_nearest_2x(prev)
      results.insert(0, getattr(self, f'fpn_output{level}')(prev))
    results.append(results[-1][:, ::2, ::2, :])  # LastLevelMaxPool: kernel 1, stride 2
    return results
