"""VID, variational information distillation (Ahn et al. CVPR 2019; METHODS.md 9).

One stage of mdistiller's `vid_loss` (`mdistiller/distillers/VID.py`) after the
student's regressor: the teacher map is a sample of a Gaussian whose mean the regressor
predicts and whose per-channel variance is softplus(log_scale) + eps; the loss is its
negative log-likelihood without the constant, averaged over batch, positions and channels.
The regressor and the pooling of a larger student map are the method's.
"""
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.losses._numerics import as_float32, frozen
from kd_jax.losses.feature_kd import adaptive_avg_pool


def vid(predicted_mean, teacher_map, log_scale, eps=1e-5):
  """mean over B, H, W, C of 0.5 [(mu - t)^2 / var + log var], var = softplus(log_scale) + eps.

  predicted_mean [B, H, W, C] (the student's regressor output), teacher_map
  [B, H', W', C] (average-pooled to H x W first when larger, as mdistiller), log_scale [C].
  softplus is mdistiller's log(1 + exp(.)), computed without overflow. Gradients reach
  `predicted_mean` and `log_scale`, never the teacher.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> vid = jax.jit(losses.vid)
    >>> predicted, teacher = jnp.zeros((1, 1, 1, 1)), jnp.ones((1, 1, 1, 1))
    >>> print(round(float(vid(predicted, teacher, jnp.zeros(1))), 4))  # var = log 2 + 1e-5
    0.5381
  """
  mean, teacher_map, log_scale = as_float32(predicted_mean, frozen(teacher_map), log_scale)
  if teacher_map.shape[1] > mean.shape[1]:
    teacher_map = adaptive_avg_pool(teacher_map, mean.shape[1:3])
  variance = jax.nn.softplus(log_scale) + eps
  return jnp.mean(0.5 * (jnp.square(mean - teacher_map) / variance + jnp.log(variance)))


def vid_log_scale(init_pred_var=5.0, eps=1e-5):
  """The log_scale that starts the variance at init_pred_var: log(exp(v - eps) - 1)."""
  return float(np.log(np.exp(init_pred_var - eps) - 1.0))  # float64, as mdistiller
