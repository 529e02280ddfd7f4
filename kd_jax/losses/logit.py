"""Logit-matching losses: KD, DKD, DIST and the logit-standardization pre-process.

Formulas are METHODS.md sections 1-3; teacher inputs never carry gradient.
"""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen, l2_norm, safe_sqrt


def _kl_rows(teacher_log_probs, student_log_probs):
  """sum_c p_t (log p_t - log p_s) per row; rows where p_t underflows to 0 add 0."""
  return jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def kd(student_logits, teacher_logits, temperature=4.0):
  """Hinton KD: T^2 * mean_b KL(softmax(z_t/T) || softmax(z_s/T)) (METHODS.md 2).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> kd = jax.jit(losses.kd)
    >>> student, teacher = jnp.array([[0.0, 0.0]]), jnp.array([[2.0, 0.0]])
    >>> print(round(float(kd(student, teacher, temperature=1.0)), 4))
    0.3278
    >>> print(round(float(kd(student, teacher)), 4))  # T = 4: T^2 * KL at T = 4
    0.4848
    >>> print(float(kd(teacher, teacher)))
    0.0
  """
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  return temperature**2 * jnp.mean(_kl_rows(log_p_t, log_p_s))


def kd_instance_temperature(student_logits, teacher_logits, temperatures, teacher_eps=1e-7):
  """KD with one temperature per sample, as CTKD's instance-wise loss (its README's
  `KL_Loss`): mean_b T_b^2 sum_c q_t (log q_t - log softmax(z_s/T_b)), q_t = softmax(z_t/T_b)
  + teacher_eps. `temperatures` [B] may carry gradient (CTKD learns them).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> kd_instance_temperature = jax.jit(losses.kd_instance_temperature)
    >>> student, teacher = jnp.zeros((2, 2)), jnp.array([[2.0, 0.0], [2.0, 0.0]])
    >>> loss = kd_instance_temperature(student, teacher, jnp.array([1.0, 2.0]))
    >>> print(round(float(loss), 4))  # (KL at T=1 + 2^2 * KL at T=2) / 2
    0.3858
  """
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  temperatures = jnp.asarray(temperatures, jnp.float32)[:, None]
  log_p_s = jax.nn.log_softmax(student_logits / temperatures, axis=-1)
  q_t = jax.nn.softmax(teacher_logits / temperatures, axis=-1) + teacher_eps
  rows = jnp.sum(q_t * (jnp.log(q_t) - log_p_s), axis=-1)
  return jnp.mean(temperatures[:, 0]**2 * rows)


def _binary_log_probs(scaled_logits, target_mask):
  """log [p_target, 1 - p_target] from logits, without forming 1 - p (stable at +-1e4)."""
  log_total = jax.nn.logsumexp(scaled_logits, axis=-1)
  log_target = jnp.sum(jnp.where(target_mask, scaled_logits, 0.0), axis=-1) - log_total
  others = jnp.where(target_mask, -jnp.inf, scaled_logits)
  log_others = jax.nn.logsumexp(others, axis=-1) - log_total
  return jnp.stack([log_target, log_others], axis=-1)


def dkd(student_logits, teacher_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
  """Decoupled KD: alpha*TCKD + beta*NCKD (METHODS.md 3, mdistiller `dkd_loss`).

  TCKD compares the binary (target, rest) distributions; NCKD the distributions over
  the non-target classes, the target pushed out with softmax(z/T - 1000*g) as the
  reference code does. Both are computed in log space so they stay finite at +-1e4.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> dkd = jax.jit(losses.dkd)
    >>> student, teacher = jnp.zeros((1, 3)), jnp.array([[2.0, 1.0, 0.0]])
    >>> labels = jnp.array([0])
    >>> tckd = dkd(student, teacher, labels, alpha=1.0, beta=0.0, temperature=1.0)
    >>> nckd = dkd(student, teacher, labels, alpha=0.0, beta=1.0, temperature=1.0)
    >>> print(round(float(tckd), 4), round(float(nckd), 4))
    0.2291 0.1109
    >>> print(round(float(dkd(student, teacher, labels, temperature=1.0)), 4))
    1.1166
  """
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  batch = student_logits.shape[0]
  target_mask = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=bool)
  z_s, z_t = student_logits / temperature, teacher_logits / temperature

  tckd = jnp.sum(_kl_rows(_binary_log_probs(z_t, target_mask),
                          _binary_log_probs(z_s, target_mask)))
  push_out = 1000.0 * target_mask
  nckd = jnp.sum(_kl_rows(jax.nn.log_softmax(z_t - push_out, axis=-1),
                          jax.nn.log_softmax(z_s - push_out, axis=-1)))
  scale = temperature**2 / batch
  return alpha * scale * tckd + beta * scale * nckd


def _pearson_rows(a, b, eps=1e-8):
  """Per-row Pearson correlation, as DIST: cosine of the row-centred vectors."""
  a = a - jnp.mean(a, axis=-1, keepdims=True)
  b = b - jnp.mean(b, axis=-1, keepdims=True)
  return jnp.sum(a * b, axis=-1) / (l2_norm(a, -1) * l2_norm(b, -1) + eps)


def dist(student_logits, teacher_logits, beta=1.0, gamma=1.0, temperature=1.0):
  """DIST (Huang et al. 2022): beta*inter + gamma*intra, each T^2 (1 - mean Pearson).

  inter correlates each sample's class distribution; intra each class's column over
  the batch, so like CSKD it is a batch-level loss.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> dist = jax.jit(losses.dist)
    >>> student = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    >>> teacher = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 0.0]])
    >>> print(round(float(dist(student, teacher, gamma=0.0)), 4))  # inter only
    0.4993
    >>> print(round(float(dist(student, teacher)), 4))  # inter 0.4993 + intra 0.4372
    0.9364
    >>> print(round(float(dist(teacher, teacher)), 4))
    0.0
  """
  student_logits, teacher_logits = as_float32(student_logits, frozen(teacher_logits))
  p_s = jax.nn.softmax(student_logits / temperature, axis=-1)
  p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  inter = 1.0 - jnp.mean(_pearson_rows(p_s, p_t))
  intra = 1.0 - jnp.mean(_pearson_rows(p_s.T, p_t.T))
  return temperature**2 * (beta * inter + gamma * intra)


def logit_standardize(logits, eps=1e-7):
  """Z-score per sample: (z - mean) / (std_unbiased + eps) (Sun et al. CVPR 2024).

  Keeps the input dtype's float32 upcast; all-equal rows map to zeros with zero gradient.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> logit_standardize = jax.jit(losses.logit_standardize)
    >>> z = logit_standardize(jnp.array([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]]))
    >>> print([[round(float(v), 4) for v in row] for row in z])  # std (ddof=1) of 1, 2, 3 is 1
    [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
  """
  (logits,) = as_float32(logits)
  centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
  dof = logits.shape[-1] - 1
  std = safe_sqrt(jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / dof)
  return centred / (std + eps)


def hard_distillation(student_logits, teacher_logits):
  """DeiT's hard distillation: mean CE of the student against the teacher's argmax class
  (Touvron et al. 2021, eq. 3's second term; the ND authors' DeiT `KDLoss`).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> hard_distillation = jax.jit(losses.hard_distillation)
    >>> student, teacher = jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 3.0]])
    >>> print(round(float(hard_distillation(student, teacher)), 4))  # -log(1/2), class 1
    0.6931
  """
  (student_logits,) = as_float32(student_logits)
  targets = jnp.argmax(frozen(teacher_logits), axis=-1)
  log_probs = jax.nn.log_softmax(student_logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, targets[:, None], axis=-1))


def soft_target_cross_entropy(logits, targets):
  """mean_i sum_c -targets_ic log softmax(logits_i)_c: CE against (mixed, smoothed) target
  distributions (timm's SoftTargetCrossEntropy).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> soft_target_cross_entropy = jax.jit(losses.soft_target_cross_entropy)
    >>> logits, targets = jnp.array([[2.0, 0.0]]), jnp.array([[0.5, 0.5]])
    >>> print(round(float(soft_target_cross_entropy(logits, targets)), 4))
    1.1269
  """
  (logits,) = as_float32(logits)
  return -jnp.mean(jnp.sum(frozen(targets) * jax.nn.log_softmax(logits, axis=-1), axis=-1))
