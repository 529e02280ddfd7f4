"""detectron2's layer wrappers in Flax NNX (NHWC): Conv2d with norm and activation,
FrozenBatchNorm2d, and freezing (FREEZE_AT).

Frozen tensors are `Frozen` variables instead of nnx.Params: the trainer differentiates and
optimises nnx.Params only, so a frozen tensor gets no gradient, no momentum and no weight
decay, exactly as detectron2's `requires_grad = False` tensors, which its optimizer never
sees (a stop_gradient alone would still let weight decay shrink them). It also spares the
backward pass through the frozen stem and res2: nothing before them is differentiated.
"""

import jax
import jax.numpy as jnp
from flax import nnx

# fvcore c2_msra_fill: kaiming_normal_(mode='fan_out', nonlinearity='relu'), bias 0.
C2_MSRA_FILL = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# fvcore c2_xavier_fill: kaiming_uniform_(a=1) = U(-sqrt(3/fan_in), sqrt(3/fan_in)), bias 0.
C2_XAVIER_FILL = nnx.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
ZEROS = nnx.initializers.zeros_init()


def normal(stddev):
  """nn.init.normal_(std=stddev)."""
  return nnx.initializers.normal(stddev)


class Frozen(nnx.Variable):
  """A tensor that is never trained: FrozenBatchNorm2d buffers, frozen stages' weights."""


def freeze(module):
  """Turns every nnx.Param inside `module` into a Frozen variable (detectron2's
  CNNBlockBase.freeze: requires_grad = False; its norms are FrozenBN already)."""
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Module):
      for name, value in list(vars(node).items()):
        if isinstance(value, nnx.Param):
          setattr(node, name, Frozen(value[...]))
  return module


class FrozenBatchNorm2d(nnx.Module):
  """detectron2 layers/batch_norm.py FrozenBatchNorm2d: y = x * scale + shift with
  scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.

  Initialised to the identity as detectron2 (running_var = 1 - eps). Leaf names are
  detectron2's buffer names.
  """

  def __init__(self, num_features, eps=1e-5):
    self.eps = eps
    self.weight = Frozen(jnp.ones((num_features,), jnp.float32))
    self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = Frozen(jnp.zeros((num_features,), jnp.float32))
    self.running_var = Frozen(jnp.full((num_features,), 1.0 - eps, jnp.float32))

  def __call__(self, x):
    scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
    shift = self.bias[...] - self.running_mean[...] * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class Conv2d(nnx.Module):
  """detectron2 layers/wrappers.py Conv2d: conv, then `norm`, then `activation`.

  kernel (kh, kw, in/groups, out) <-> PyTorch weight (out, in/groups, kh, kw); symmetric
  explicit padding as PyTorch. `activation` is a plain function (static).
  """

  def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0,
               groups=1, bias=False, norm=None, activation=None, kernel_init=C2_MSRA_FILL,
               bias_init=ZEROS, dtype=jnp.float32, rngs):
    self.stride, self.padding, self.groups, self.dtype = stride, padding, groups, dtype
    shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_channels,), jnp.float32)) if bias else None
    self.norm = norm
    self.activation = activation

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        (self.stride, self.stride), ((self.padding, self.padding),) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=self.groups)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.norm is not None:
      y = self.norm(y)
    if self.activation is not None:
      y = self.activation(y)
    return y


def linear(in_features, out_features, *, kernel_init, dtype=jnp.float32, rngs):
  """nn.Linear with the given weight init and zero bias (detectron2's heads)."""
  return nnx.Linear(in_features, out_features, kernel_init=kernel_init, bias_init=ZEROS,
                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def max_pool(x, kernel_size, stride, padding):
  """F.max_pool2d (floor mode), NHWC; padded cells never win."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel_size, kernel_size, 1),
                               (1, stride, stride, 1), pad)


def make_divisible(value, divisor, min_value=None):
  """The TF/tonylins MobileNet channel rounding the ND repository's mobilenetv2.py uses."""
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded
