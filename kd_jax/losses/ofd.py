"""OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al. ICCV 2019).

One stage of mdistiller's OFD (`mdistiller/distillers/OFD.py`, `feat_loss` and the margins
of `init_ofd_modules`; METHODS.md 9). The teacher's pre-ReLU map is compared with the
student's (after its connector) by a partial L2 that ignores what the teacher's ReLU
would discard: where the teacher is below its margin, only a student above the margin is
pushed down to it. The margin of a channel is the expected value of the teacher's
pre-ReLU response given that it is negative, from that channel's BatchNorm (weight =
std, bias = mean of a Gaussian response).
"""
import jax.numpy as jnp
import numpy as np
from scipy import special

from kd_jax.losses._numerics import as_float32, frozen
from kd_jax.losses.feature_kd import adaptive_avg_pool

_MIN_NEGATIVE_MASS = 0.001  # mdistiller: below this P(x < 0) the margin is -3 std


def ofd_margin(bn_scale, bn_bias):
  """Per-channel margins [C] (float32) from a BatchNorm's weight (scale) and bias.

  With s = |scale|, m = bias: E[x | x < 0] for x ~ N(m, s^2),
  m - s phi(m/s) / Phi(-m/s), when Phi(-m/s) > 0.001, else -3 s; in float64 as
  mdistiller's Python floats. A channel with s = 0 (mdistiller divides by zero) gets
  the limit of that formula, min(m, 0). NumPy: computed once, outside any jit.

  Example:
    >>> from kd_jax import losses
    >>> margins = losses.ofd_margin([1.0, 0.0], [0.0, 1.0])  # -sqrt(2/pi); min(1, 0)
    >>> print([round(float(m), 4) for m in margins])
    [-0.7979, 0.0]
  """
  std = np.abs(np.asarray(bn_scale, np.float64))
  mean = np.asarray(bn_bias, np.float64)
  safe_std = np.where(std > 0, std, 1.0)
  ratio = mean / safe_std
  negative_mass = special.ndtr(-ratio)
  with np.errstate(divide="ignore", invalid="ignore"):
    expected = -safe_std * np.exp(-ratio**2 / 2) / np.sqrt(2 * np.pi) / negative_mass + mean
  margin = np.where(negative_mass > _MIN_NEGATIVE_MASS, expected, -3 * std)
  return np.where(std > 0, margin, np.minimum(mean, 0.0)).astype(np.float32)


def ofd(student_map, teacher_map, margin):
  """Partial L2, summed over H, W, C and averaged over the batch (mdistiller `feat_loss`).

  student_map [B, H, W, C] (the connector's output), teacher_map [B, H', W', C] pre-ReLU
  (average-pooled to H x W, as mdistiller, even when smaller), margin [C]. Per entry:
  (s - m)^2 where s > m >= t; (s - t)^2 where s > t > m and t <= 0; (s - t)^2 where t > 0.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> ofd = jax.jit(losses.ofd)
    >>> student = jnp.array([0.0, 0.0, 0.0, -3.0]).reshape(1, 1, 1, 4)
    >>> teacher = jnp.array([-2.0, -0.5, 2.0, -2.0]).reshape(1, 1, 1, 4)
    >>> print(round(float(ofd(student, teacher, jnp.full(4, -1.0))), 4))  # 1 + 0.25 + 4 + 0
    5.25
  """
  student_map, teacher_map, margin = as_float32(student_map, frozen(teacher_map),
                                                frozen(margin))
  teacher_map = adaptive_avg_pool(teacher_map, student_map.shape[1:3])
  student, teacher = student_map, teacher_map
  below = (student > margin) & (teacher <= margin)
  between = (student > teacher) & (teacher > margin) & (teacher <= 0)
  positive = teacher > 0
  loss = (jnp.square(student - margin) * below + jnp.square(student - teacher) * between
          + jnp.square(student - teacher) * positive)
  return jnp.sum(jnp.mean(loss, axis=0))
