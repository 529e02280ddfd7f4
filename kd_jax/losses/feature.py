"""ND, the feature norm and direction loss, and the teacher class means it needs (METHODS.md 5)."""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen, l2_norm


def nd(student_features, teacher_features, class_means, labels):
  """mean_i [1 - <f_s,i, e_y> / max(|f_s,i|, |f_t,i|)], e_y = mu_y / |mu_y|.

  Not a cosine: f_s is not normalised, so the loss also rewards a student norm at least
  the teacher's. On a tie the student's norm is taken (gradient flows through it).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> nd = jax.jit(losses.nd)
    >>> means = jnp.array([[0.0, 1.0], [1.0, 0.0]])  # class 0 points along the second axis
    >>> student, teacher = jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 10.0]])
    >>> print(round(float(nd(student, teacher, means, jnp.array([0]))), 4))  # 1 - 4/10
    0.6
  """
  return nd_to_centers(student_features, teacher_features, frozen(class_means)[labels])


def nd_to_centers(student_features, teacher_features, centers):
  """ND with each example's own centre row `centers` [B, d] instead of its class's mean:
  mean_i [1 - <f_s,i, c_i/|c_i|> / max(|f_s,i|, |f_t,i|)]. The ND authors' DeiT code
  (`project_center_v2`) feeds it centres mixed as mixup mixes the images.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> nd_to_centers = jax.jit(losses.nd_to_centers)
    >>> student, teacher = jnp.array([[6.0, 8.0]]), jnp.array([[0.0, 5.0]])
    >>> centers = jnp.array([[0.0, 2.0]])
    >>> print(round(float(nd_to_centers(student, teacher, centers)), 4))  # 1 - 8/10
    0.2
  """
  student_features, teacher_features, centers = as_float32(
      student_features, frozen(teacher_features), frozen(centers))
  directions = centers / jnp.maximum(l2_norm(centers, -1), 1e-12)[:, None]
  student_norm = l2_norm(student_features, -1)
  teacher_norm = l2_norm(teacher_features, -1)
  larger_norm = jnp.where(student_norm >= teacher_norm, student_norm, teacher_norm)
  projection = jnp.sum(student_features * directions, axis=-1)
  return jnp.mean(1.0 - projection / jnp.maximum(larger_norm, 1e-12))


def class_sums(features, labels, num_classes):
  """Per-class feature sums [C, d] and counts [C]: add these over batches, then divide.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> class_sums = jax.jit(losses.class_sums, static_argnums=2)
    >>> features = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> sums, counts = class_sums(features, jnp.array([0, 0, 2]), 3)
    >>> print(sums.tolist(), counts.tolist())
    [[4.0, 6.0], [0.0, 0.0], [5.0, 6.0]] [2.0, 0.0, 1.0]
  """
  (features,) = as_float32(features)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot.T @ features, jnp.sum(one_hot, axis=0)


def class_means(features, labels, num_classes):
  """Per-class mean of `features` [C, d]; a class with no sample gets zeros.

  A one-hot matmul, so on sharded inputs under jit it reduces over the global batch.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> class_means = jax.jit(losses.class_means, static_argnums=2)
    >>> features = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> print(class_means(features, jnp.array([0, 0, 2]), 3).tolist())
    [[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]
  """
  sums, counts = class_sums(features, labels, num_classes)
  return sums / jnp.maximum(counts, 1.0)[:, None]
