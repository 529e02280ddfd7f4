"""MLKD's class- and batch-level consistency losses (Jin et al. CVPR 2023).

As the authors' `cc_loss` / `bc_loss` (Jin-Ying/Multi-Level-Logit-Distillation,
`mdistiller/distillers/KD_ours.py`): with P = softmax(z / T), the squared Frobenius
distance between the teacher's and the student's Gram matrices, divided by the number of
rows. Unlike the multi-view CSKD distances (`class_correlation_distance`), these compare
the matrices entry by entry, not by cosine, and carry no T^2 factor. Both are
batch-level: under jit on globally sharded arrays they see the global batch.
"""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen


def _gram_gap(student_logits, teacher_logits, temperature, over_classes):
  """sum((G_t - G_s)^2) / rows of G, G = P^T P (C x C) or P P^T (B x B)."""
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  p_s = jax.nn.softmax(student_logits / temperature, axis=-1)
  p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  if over_classes:
    gram_s, gram_t = p_s.T @ p_s, p_t.T @ p_t
  else:
    gram_s, gram_t = p_s @ p_s.T, p_t @ p_t.T
  return jnp.sum(jnp.square(gram_t - gram_s)) / gram_t.shape[0]


def class_consistency(student_logits, teacher_logits, temperature=4.0):
  """MLKD class level: ||P_t^T P_t - P_s^T P_s||_F^2 / C (the authors' `cc_loss`).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> class_consistency = jax.jit(losses.class_consistency)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> print(round(float(class_consistency(student, teacher, temperature=1.0)), 4))
    0.3087
  """
  return _gram_gap(student_logits, teacher_logits, temperature, over_classes=True)


def batch_consistency(student_logits, teacher_logits, temperature=4.0):
  """MLKD batch level: ||P_t P_t^T - P_s P_s^T||_F^2 / B (the authors' `bc_loss`).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> batch_consistency = jax.jit(losses.batch_consistency)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> print(round(float(batch_consistency(student, teacher, temperature=1.0)), 4))
    0.1731
  """
  return _gram_gap(student_logits, teacher_logits, temperature, over_classes=False)
