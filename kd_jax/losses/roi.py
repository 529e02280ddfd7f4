"""Distillation losses on a detector's sampled RoIs (METHODS.md 13), with static shapes.

The ND authors' `Detection/model/utils.py` (DirectNormLoss, KDLoss, dkd_loss) run on the
sampled RoIs of all images of a GPU's batch, concatenated: every term is a sum over RoIs
divided by their count N. Here the RoIs come padded ([R] rows with a `valid` mask, as
`FasterRCNN.losses` returns them flattened): the sums run over the valid rows only and N
is the number of valid rows, so each value equals the authors' on the valid RoIs alone,
and padded rows get no gradient (they are replaced by harmless values before any math).
Labels are 0..K-1 foreground and K background (detectron2); the background is a class
like any other here (ND has a background centre, KD/DKD see K+1 logits).
"""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen, l2_norm
from kd_jax.losses.logit import _binary_log_probs, _kl_rows


def _valid_mean(rows, valid):
  """sum of `rows` over the valid RoIs / their count (the authors' N)."""
  return jnp.sum(jnp.where(valid, rows, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _masked(x, valid, fill):
  """Padded rows replaced by `fill`, so no NaN from them reaches a gradient."""
  return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), x, fill)


def roi_nd(student_features, teacher_features, class_centers, labels, valid):
  """ND per RoI, `DirectNormLoss.project_center` / N (without the weight):
  (1/N) sum_valid [1 - <s_i, c_y/|c_y|> / max(|s_i|, |t_i|)].

  `student_features`, `teacher_features` [R, d] box-head outputs (after fc2 + ReLU);
  `class_centers` [K+1, d] (background row last); `labels` [R] in 0..K (padding any);
  `valid` [R] bool. On a tie of norms the student's is the max (Python's max(s, t)).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> roi_nd = jax.jit(losses.roi_nd)
    >>> student = jnp.array([[3.0, 4.0], [0.0, 1.0], [7.0, 7.0]])  # the last RoI: padding
    >>> teacher = jnp.array([[0.0, 2.0], [0.0, 2.0], [1.0, 1.0]])
    >>> centers = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # class 0, background
    >>> loss = roi_nd(student, teacher, centers, jnp.array([0, 1, 5]),
    ...               jnp.array([True, True, False]))
    >>> print(round(float(loss), 4))  # ((1 - 3/5) + (1 - 1/2)) / 2
    0.45
  """
  valid = jnp.asarray(valid, bool)
  student_features, teacher_features, class_centers = as_float32(
      student_features, frozen(teacher_features), frozen(class_centers))
  student_features = _masked(student_features, valid, 1.0)
  teacher_features = _masked(teacher_features, valid, 1.0)
  centers = class_centers[jnp.where(valid, labels, 0)]
  directions = centers / jnp.maximum(l2_norm(centers, -1), 1e-12)[:, None]
  student_norm = l2_norm(student_features, -1)
  teacher_norm = l2_norm(teacher_features, -1)
  larger_norm = jnp.where(student_norm >= teacher_norm, student_norm, teacher_norm)
  projection = jnp.sum(student_features * directions, axis=-1)
  return _valid_mean(1.0 - projection / jnp.maximum(larger_norm, 1e-12), valid)


def roi_kd(student_logits, teacher_logits, valid, temperature=1.0):
  """`KDLoss` without the weight: T^2 KL(softmax(t/T) || softmax(s/T)) summed over the
  valid RoIs / N (F.kl_div's 'batchmean' over the concatenated RoIs).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> roi_kd = jax.jit(losses.roi_kd)
    >>> student, teacher = jnp.array([[0.0, 0.0], [5.0, 5.0]]), jnp.array([[2.0, 0.0], [9.0, 9.0]])
    >>> print(round(float(roi_kd(student, teacher, jnp.array([True, False]))), 4))  # row 1 only
    0.3278
  """
  valid = jnp.asarray(valid, bool)
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  student_logits = _masked(student_logits, valid, 0.0)
  teacher_logits = _masked(teacher_logits, valid, 0.0)
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  return temperature**2 * _valid_mean(_kl_rows(log_p_t, log_p_s), valid)


def roi_dkd(student_logits, teacher_logits, labels, valid, alpha=1.0, beta=0.25,
            temperature=1.0):
  """`dkd_loss` on the RoI logits: alpha TCKD + beta NCKD, each a sum over the valid RoIs
  x T^2 / N (its `/ target.shape[0]`); the target of a background RoI is class K.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> roi_dkd = jax.jit(losses.roi_dkd)
    >>> student = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])  # the second RoI: padding
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    >>> loss = roi_dkd(student, teacher, jnp.array([0, 2]), jnp.array([True, False]))
    >>> print(round(float(loss), 4))  # TCKD: KL((e^2, 2) / (e^2 + 2) || (1, 2) / 3); NCKD 0
    0.433
  """
  valid = jnp.asarray(valid, bool)
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  student_logits = _masked(student_logits, valid, 0.0)
  teacher_logits = _masked(teacher_logits, valid, 0.0)
  target_mask = jax.nn.one_hot(jnp.where(valid, labels, 0), student_logits.shape[-1],
                               dtype=bool)
  z_s, z_t = student_logits / temperature, teacher_logits / temperature
  tckd = _kl_rows(_binary_log_probs(z_t, target_mask), _binary_log_probs(z_s, target_mask))
  push_out = 1000.0 * target_mask
  nckd = _kl_rows(jax.nn.log_softmax(z_t - push_out, axis=-1),
                  jax.nn.log_softmax(z_s - push_out, axis=-1))
  return temperature**2 * (alpha * _valid_mean(tckd, valid) + beta * _valid_mean(nckd, valid))
