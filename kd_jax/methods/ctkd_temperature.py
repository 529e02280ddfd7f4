"""CTKD's learnable temperature (Li et al. AAAI 2023; zhengli97/CTKD, METHODS.md 10).

The temperature module trains with the student through a gradient-reversal layer: the
forward pass is the identity, the backward pass multiplies the gradient by -lambda, so one
optimizer step moves the module towards a *larger* distillation loss while the student
moves towards a smaller one. lambda follows a cosine curriculum over the first epochs.
The raw output r of the module becomes T = t_start + t_end * sigmoid(r).

As the authors' code: `models/temp_global.py` (Global_T: one parameter initialised to 1,
GradientReversal multiplying the gradient by its `lambda_`) and `train_student.py`
(CosineDecay(max=0, min=-1, loops=10) evaluated at the 1-based epoch; `temp = t_start +
t_end * sigmoid(...)` in `helper/loops.py`). Their `lambda_` is our -lambda.
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

from kd_jax.models import layers


@jax.custom_vjp
def gradient_reversal(x, scale):
  """Identity forward; the backward pass multiplies the incoming gradient by `scale`."""
  del scale
  return x


def _reversal_forward(x, scale):
  return x, scale


def _reversal_backward(scale, gradient):
  return scale * gradient, jnp.zeros_like(scale)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


def curriculum_lambda(epoch, lambda_start=0.0, lambda_end=1.0, epochs=10):
  """lambda at the 1-based `epoch`: lambda_start -> lambda_end along a half cosine over
  `epochs` epochs, then held (CTKD `CosineDecay.get_value`, with lambda = -value)."""
  done = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, float(epochs))
  rest = (jnp.cos(done * math.pi / epochs) + 1.0) * 0.5  # 1 at the start, 0 at the end
  return lambda_end + (lambda_start - lambda_end) * rest


def bounded(raw, t_start, t_end):
  """T = t_start + t_end * sigmoid(raw): the module's output mapped into (t_start,
  t_start + t_end)."""
  return t_start + t_end * jax.nn.sigmoid(raw)


class GlobalTemperature(nnx.Module):
  """One learnable temperature for every sample (CTKD Global_T; raw value 1 at init)."""

  def __init__(self):
    self.raw = nnx.Param(jnp.ones((), jnp.float32))

  def __call__(self, teacher_logits, student_logits, reversal_scale):
    del teacher_logits, student_logits  # Global_T ignores its inputs
    return gradient_reversal(self.raw[...], reversal_scale)


class InstanceTemperature(nnx.Module):
  """A temperature per sample from the two models' predictions (CTKD instance-wise).

  Input: the teacher's top-k softmax probabilities (descending) and the student's
  probabilities of the same classes, concatenated, without gradient; then Linear(2k,
  hidden) -> BatchNorm (batch statistics) -> ReLU -> Linear(hidden, 1), the last layer
  zero-initialised (every sample starts at T = t_start + t_end / 2). The authors publish
  this variant's code only as a download (README); this layout is that of their
  `Instance_MLP` (1x1 convs on [B, 2k, 1, 1], i.e. these linears) as circulated in ports.
  """

  def __init__(self, num_classes, hidden=256, topk=100, *, rngs):
    self.topk = min(topk, num_classes)
    self.hidden = layers.linear(2 * self.topk, hidden, dtype=jnp.float32, rngs=rngs)
    self.norm = layers.batch_norm(hidden, dtype=jnp.float32, rngs=rngs)
    self.out = layers.linear(hidden, 1, kernel_init=layers.ZEROS, bias_init=layers.ZEROS,
                             dtype=jnp.float32, rngs=rngs)

  def __call__(self, teacher_logits, student_logits, reversal_scale):
    p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1)
    p_s = jax.nn.softmax(student_logits.astype(jnp.float32), axis=-1)
    top_t, index = jax.lax.top_k(p_t, self.topk)
    inputs = jax.lax.stop_gradient(
        jnp.concatenate([top_t, jnp.take_along_axis(p_s, index, axis=-1)], axis=-1))
    hidden = jax.nn.relu(self.norm(self.hidden(inputs), use_running_average=False))
    return gradient_reversal(self.out(hidden)[:, 0], reversal_scale)
