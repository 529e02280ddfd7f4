"""CSKD, CSWT and the correlation distances of multi-view CSKD (METHODS.md section 4).

All are batch-level: under jit on globally sharded arrays they see the global batch.
"""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import abs_cosine, as_float32, frozen

_EQUAL_SIMILARITY_TOLERANCE = 1e-6  # a few float32 ulps at 1.0


def _probs(logits, temperature):
  """softmax(z / T) with T a scalar or a per-sample vector [B]."""
  temperature = jnp.asarray(temperature, jnp.float32)
  if temperature.ndim == 1:
    temperature = temperature[:, None]
  return jax.nn.softmax(logits / temperature, axis=-1)


def cskd(student_logits, teacher_logits, temperature=4.0):
  """T̄^2 (1 - mean_j |cos(P_s[:, j], P_t[:, j])|): per-class cosine over the batch.

  `temperature` is a scalar or per-sample [B] (CSWT); T̄ is T or the mean of the T_i.
  METHODS.md 4.1; the training code applies the method weight (2 in the paper's code).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> cskd = jax.jit(losses.cskd)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> print(round(float(cskd(student, teacher, temperature=1.0)), 4))
    0.0615
    >>> print(round(float(cskd(student, teacher)), 4))  # T = 4, times 4^2
    0.0815
    >>> print(round(float(cskd(student, teacher, jnp.array([1.0, 1.0]))), 4))  # per-sample T
    0.0615
  """
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  p_s = _probs(student_logits, temperature)
  p_t = _probs(teacher_logits, temperature)
  mean_temperature = jnp.mean(jnp.asarray(temperature, jnp.float32))
  return mean_temperature**2 * (1.0 - jnp.mean(abs_cosine(p_s, p_t, axis=0)))


def cswt_temperatures(student_logits, teacher_logits, t_low=2.0, t_high=6.0):
  """Per-sample temperatures [B]: t_low where student and teacher agree most, t_high least.

  c_i = |cos(softmax(z_s,i), softmax(z_t,i))| at T = 1, mapped linearly from
  [c_min, c_max] to [t_high, t_low] (METHODS.md 4.2). No gradient. When every c_i is
  equal (a batch of one, identical predictions) the map is undefined; every sample then
  gets (t_low + t_high) / 2. "Equal" is to float32 precision (spread <= 1e-6), so
  rounding noise in c_i is not stretched over the whole [t_low, t_high] range.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> cswt_temperatures = jax.jit(losses.cswt_temperatures)
    >>> student = jnp.array([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    >>> teacher = jnp.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    >>> print([round(float(t), 4) for t in cswt_temperatures(student, teacher)])
    [2.0, 3.1139, 6.0]
    >>> print(cswt_temperatures(student[:1], teacher[:1]).tolist())  # one sample
    [4.0]
  """
  student_logits, teacher_logits = as_float32(frozen(student_logits), frozen(teacher_logits))
  similarity = abs_cosine(jax.nn.softmax(student_logits, axis=-1),
                          jax.nn.softmax(teacher_logits, axis=-1), axis=-1)
  c_min, c_max = jnp.min(similarity), jnp.max(similarity)
  spread = c_max - c_min
  distinct = spread > _EQUAL_SIMILARITY_TOLERANCE
  fraction = (c_max - similarity) / jnp.where(distinct, spread, 1.0)
  temperatures = jnp.where(distinct, t_low + (t_high - t_low) * fraction,
                           0.5 * (t_low + t_high))
  return frozen(temperatures)


def _gram_distance(student_logits, teacher_logits, temperature, over_classes):
  """1 - mean_rows |cos| between teacher and student Gram matrices of P = softmax(z/T)."""
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  p_s = _probs(student_logits, temperature)
  p_t = _probs(teacher_logits, temperature)
  if over_classes:
    gram_s, gram_t = p_s.T @ p_s, p_t.T @ p_t
  else:
    gram_s, gram_t = p_s @ p_s.T, p_t @ p_t.T
  return 1.0 - jnp.mean(abs_cosine(gram_t, gram_s, axis=-1))


def class_correlation_distance(student_logits, teacher_logits, temperature):
  """`cc`: rows of the C x C class-correlation matrices P^T P compared by |cos| (4.3).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> class_correlation_distance = jax.jit(losses.class_correlation_distance)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> print(round(float(class_correlation_distance(student, teacher, 1.0)), 4))
    0.2259
  """
  return _gram_distance(student_logits, teacher_logits, temperature, over_classes=True)


def batch_correlation_distance(student_logits, teacher_logits, temperature):
  """`bc`: rows of the B x B sample-correlation matrices P P^T compared by |cos| (4.3).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> batch_correlation_distance = jax.jit(losses.batch_correlation_distance)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> print(round(float(batch_correlation_distance(student, teacher, 1.0)), 4))
    0.017
  """
  return _gram_distance(student_logits, teacher_logits, temperature, over_classes=False)
