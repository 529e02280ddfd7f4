"""Shared building blocks that reproduce PyTorch layer semantics in Flax NNX.

Convolutions take explicit symmetric padding (PyTorch `padding=p`), never 'SAME', so
strided layers line up with PyTorch pixel for pixel. Parameters are always float32;
`dtype` is only the computation dtype.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

# mdistiller / torchvision conv init: normal with std sqrt(2 / (k*k*out_channels)).
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's default Conv2d/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
ZEROS = nnx.initializers.zeros_init()


def normal(stddev):
  """Plain normal init N(0, stddev^2), e.g. the 0.01 classifier init of VGG."""
  return nnx.initializers.normal(stddev)


def torch_default_bias(fan_in):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm whose running variance uses the unbiased batch variance, as PyTorch.

  Flax keeps the biased variance; PyTorch's running_var uses n/(n-1). The correction
  is exact algebra on Flax's update: new + (new - momentum * old) / (n - 1).

  `group_size` > 0 (set with `set_batch_norm_groups`) normalises each consecutive group
  of that many samples of the global batch with its own statistics, as a model wrapped
  in nn.DataParallel sees them on each GPU; the running statistics then follow the first
  group alone, because DataParallel keeps only the in-place buffer updates of the
  replica on its first device. Groups are cut from the global batch, so the result does
  not depend on how many devices the batch is sharded over.
  """
  group_size: int = 0

  def __call__(self, x, use_running_average=None, *, mask=None):
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average:
      return super().__call__(x, use_running_average=True, mask=mask)
    if self.group_size and self.group_size != x.shape[0]:
      return self._grouped(x)
    old_var = self.var[...]
    y = super().__call__(x, use_running_average=False, mask=mask)
    count = x.size // x.shape[-1]
    if count > 1:
      new_var = self.var[...]
      self.var[...] = new_var + (new_var - self.momentum * old_var) / (count - 1)
    return y

  def _grouped(self, x):
    """Training-mode normalisation with per-group statistics (float32 inside)."""
    if x.shape[0] % self.group_size:
      raise ValueError(f"batch of {x.shape[0]} does not split into BatchNorm groups of "
                       f"{self.group_size}")
    groups = x.reshape(x.shape[0] // self.group_size, self.group_size, *x.shape[1:])
    groups = groups.astype(jnp.float32)
    axes = tuple(range(1, groups.ndim - 1))
    mean = jnp.mean(groups, axes, keepdims=True)
    var = jnp.mean(jnp.square(groups - mean), axes, keepdims=True)
    y = (groups - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
    count = groups[0].size // x.shape[-1]
    first_mean = jax.lax.stop_gradient(mean[0].reshape(-1))
    first_var = jax.lax.stop_gradient(var[0].reshape(-1)) * count / max(count - 1, 1)
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * first_mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * first_var
    return y.reshape(x.shape).astype(self.dtype or x.dtype)


def set_batch_norm_groups(module, group_size):
  """Sets `group_size` (0 = the whole batch) on every BatchNorm inside `module`."""
  for _, child in nnx.iter_graph(module):
    if isinstance(child, BatchNorm):
      child.group_size = group_size
  return module


def batch_norm(num_features, *, dtype, rngs):
  """BatchNorm2d/1d with PyTorch defaults: eps 1e-5, momentum 0.1 (0.9 in Flax terms)."""
  return BatchNorm(
      num_features, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32, rngs=rngs)


def conv(in_channels, out_channels, kernel_size, *, stride=1, padding=0, groups=1,
         bias=False, kernel_init=KAIMING_FAN_OUT, bias_init=None, dtype, rngs):
  """nn.Conv2d equivalent (NHWC); kernel (kh, kw, in/groups, out)."""
  if bias_init is None:
    bias_init = ZEROS
  return nnx.Conv(
      in_channels, out_channels, (kernel_size, kernel_size),
      strides=(stride, stride), padding=((padding, padding), (padding, padding)),
      feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
      bias_init=bias_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def linear(in_features, out_features, *, kernel_init=TORCH_DEFAULT, bias_init=None,
           dtype, rngs):
  """nn.Linear equivalent; kernel (in, out). Default init is PyTorch's."""
  if bias_init is None:
    bias_init = torch_default_bias(in_features)
  return nnx.Linear(
      in_features, out_features, kernel_init=kernel_init, bias_init=bias_init,
      dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def projection(in_planes, out_planes, stride, kw):
  """The 1x1 conv + BN shortcut of ResNets when the shape changes, else None (identity)."""
  if stride == 1 and in_planes == out_planes:
    return None
  return nnx.List([conv(in_planes, out_planes, 1, stride=stride, **kw),
                   batch_norm(out_planes, **kw)])


def sequential(layers, x, train):
  """Runs an nnx.List like nn.Sequential; BatchNorms get use_running_average=not train."""
  for layer in layers:
    if isinstance(layer, nnx.BatchNorm):
      x = layer(x, use_running_average=not train)
    else:
      x = layer(x)
  return x


def max_pool(x, kernel_size, stride, padding=0):
  """nn.MaxPool2d (floor mode): padded cells never win.

  The init values are Python scalars so JAX sees the max/add monoid and can
  differentiate the window reduction (an array init makes it a generic, non-
  differentiable reduce_window).
  """
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, kernel_size, kernel_size, 1),
      (1, stride, stride, 1), pad)


def avg_pool(x, kernel_size, stride, padding=0):
  """nn.AvgPool2d with count_include_pad=True: always divides by kernel_size**2."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  summed = jax.lax.reduce_window(
      x, 0.0, jax.lax.add, (1, kernel_size, kernel_size, 1),
      (1, stride, stride, 1), pad)
  return summed / kernel_size**2


def residual_stages(x, stages, train):
  """Runs stages of blocks that return (out, pre-ReLU sum); collects both after each
  stage, the stem's `x` first (mdistiller's feats / preact_feats)."""
  outs, preacts = [x], [x]
  for stage in stages:
    for block in stage:
      x, preact = block(x, train)
    outs.append(x)
    preacts.append(preact)
  return x, outs, preacts


def classify(x, classifier, stages, preacts):
  """Global-average-pools `x` and classifies it: the (logits, features) every model
  returns, features = {'pooled', 'stages', 'preact_stages'}."""
  pooled = global_avg_pool(x)
  return classifier(pooled), {'pooled': pooled, 'stages': tuple(stages),
                              'preact_stages': tuple(preacts)}


def global_avg_pool(x):
  """[B, H, W, C] -> [B, C]; equals the fixed-size AvgPool2d the PyTorch models use."""
  return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x, groups):
  """ShuffleNet channel shuffle on NHWC, same channel order as the NCHW original."""
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, channels)
