"""AT, NST, SP, PKT and RKD: single-stage feature losses as mdistiller (METHODS.md 9).

Maps are NHWC [B, H, W, C] here and NCHW in mdistiller; every flattening below gives
mdistiller's vectors or a permutation of them that is the same for student and teacher,
which none of these losses can see. Only RKD's distance/angle weights live in a loss; the
method weights (AT 1000, NST 50, SP 3000, PKT 30000, RKD 1) and the sum over stages are
the method's. Contractions run at HIGHEST precision so "float32 inside" holds on GPU/TPU.
"""
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.losses._numerics import as_float32, frozen, l2_norm

_HIGHEST = jax.lax.Precision.HIGHEST
_NORMALIZE_EPS = 1e-12  # torch F.normalize's default, used by every mdistiller loss here
_RKD_PDIST_EPS = 1e-12  # mdistiller CFG.RKD.PDIST.EPSILON (squared distances clamped to it)


def _normalize(x, axis=-1):
  """x / max(|x|, 1e-12) as torch F.normalize: an all-zero vector maps to 0, finite grad."""
  return x / jnp.expand_dims(jnp.maximum(l2_norm(x, axis), _NORMALIZE_EPS), axis)


def _gram(a, b):
  """a @ b.T over the last axis, batched over any leading axes."""
  return jnp.einsum("...id,...jd->...ij", a, b, precision=_HIGHEST)


def _pool_weights(size_in, size_out):
  """[out, in] weights of torch adaptive average pooling: bin i is
  [floor(i*in/out), ceil((i+1)*in/out)), so bins overlap or repeat when sizes don't divide."""
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x, size):
  """F.adaptive_avg_pool2d for NHWC: a fixed averaging matrix per spatial axis.

  Static shapes and one einsum, so it jits, vmaps and runs on batch-sharded arrays.
  """
  (_, height, width, _), (out_h, out_w) = x.shape, size
  if (height, width) == (out_h, out_w):
    return x
  return jnp.einsum("ih,jw,bhwc->bijc", _pool_weights(height, out_h), _pool_weights(width, out_w),
                    x, precision=_HIGHEST)


def pool_to_common_size(student_map, teacher_map):
  """Pools the map with the larger H (larger W on a tie) to the other's H x W.

  mdistiller compares H only and pools to (H, H): the same whenever its code runs at all
  (the smaller map square); W-only differences, an error there, are pooled here too.
  """
  student_size, teacher_size = student_map.shape[1:3], teacher_map.shape[1:3]
  if student_size > teacher_size:
    student_map = adaptive_avg_pool(student_map, teacher_size)
  elif student_size < teacher_size:
    teacher_map = adaptive_avg_pool(teacher_map, student_size)
  return student_map, teacher_map


def _attention(feature_map, p):
  """Normalised channel mean of f**p, flattened (h, w) row-major as NCHW's mean(1)."""
  attention = jnp.mean(jnp.power(feature_map, p), axis=-1)
  return _normalize(attention.reshape(attention.shape[0], -1))


def at(student_map, teacher_map, p=2.0):
  """Attention transfer: mean over batch and positions of (a(f_s) - a(f_t))^2.

  a(f) = L2-normalised channel mean of f**p (mdistiller CFG.AT.P = 2), so channel counts
  may differ. f**p as mdistiller, not |f|**p: a non-integer p needs non-negative maps.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> at = jax.jit(losses.at)
    >>> student = jnp.ones((1, 2, 2, 3))  # NHWC; a(f) = [1/2, 1/2, 1/2, 1/2]
    >>> teacher = jnp.zeros((1, 2, 2, 5)).at[0, 0, 0].set(1.0)  # a(f) = [1, 0, 0, 0]
    >>> print(round(float(at(student, teacher)), 4))
    0.25
  """
  student_map, teacher_map = as_float32(student_map, frozen(teacher_map))
  student_map, teacher_map = pool_to_common_size(student_map, teacher_map)
  return jnp.mean(jnp.square(_attention(student_map, p) - _attention(teacher_map, p)))


def _channel_vectors(feature_map):
  """[B, C, H*W]: each channel's map flattened (as NCHW's view(B, C, -1)), L2-normalised."""
  batch, height, width, channels = feature_map.shape
  return _normalize(jnp.swapaxes(feature_map.reshape(batch, height * width, channels), 1, 2))


def _mean_poly_kernel(a, b):
  return jnp.mean(jnp.square(_gram(a, b)))


def nst(student_map, teacher_map):
  """Neuron selectivity transfer: squared MMD of the channel vectors, kernel <a, b>^2.

  mean K(t, t) + mean K(s, s) - 2 mean K(s, t), each mean over batch and channel pairs,
  so channel counts may differ; maps pooled to a common H x W first, as AT.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> nst = jax.jit(losses.nst)
    >>> student = jnp.ones((1, 2, 2, 1))
    >>> teacher = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0].set(1.0)
    >>> print(round(float(nst(student, teacher)), 4))  # 1 + 1 - 2 cos^2, cos = 1/2
    1.5
  """
  student_map, teacher_map = as_float32(student_map, frozen(teacher_map))
  student_map, teacher_map = pool_to_common_size(student_map, teacher_map)
  s, t = _channel_vectors(student_map), _channel_vectors(teacher_map)
  return _mean_poly_kernel(t, t) + _mean_poly_kernel(s, s) - 2.0 * _mean_poly_kernel(s, t)


def _sample_similarity(feature_map):
  flat = feature_map.reshape(feature_map.shape[0], -1)
  return _normalize(_gram(flat, flat))


def sp(student_map, teacher_map):
  """Similarity preserving: |G_t - G_s|_F^2 / B^2, G = f f^T with rows L2-normalised.

  Batch-level (B x B), so on sharded inputs under jit it sees the global batch. Any
  sample shapes: G only takes inner products of the flattened samples.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> sp = jax.jit(losses.sp)
    >>> student = jnp.array([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 1, 2)
    >>> teacher = jnp.array([[1.0, 0.0], [1.0, 0.0]]).reshape(2, 1, 1, 2)
    >>> print(round(float(sp(student, teacher)), 4))  # G_s = I, G_t = all 1/sqrt(2)
    0.2929
  """
  student_map, teacher_map = as_float32(student_map, frozen(teacher_map))
  batch = student_map.shape[0]
  difference = _sample_similarity(teacher_map) - _sample_similarity(student_map)
  return jnp.sum(jnp.square(difference)) / batch**2


def _pkt_probabilities(features, eps):
  """Cosine kernel mapped to [0, 1], rows normalised to sum 1 (mdistiller's eps on |f|)."""
  flat = features.reshape(features.shape[0], -1)
  unit = flat / (l2_norm(flat, -1)[:, None] + eps)
  unit = jnp.where(jnp.isnan(unit), 0.0, unit)  # as the reference; only non-finite inputs
  similarity = (_gram(unit, unit) + 1.0) / 2.0
  return similarity / jnp.sum(similarity, axis=1, keepdims=True)


def pkt(student_features, teacher_features, eps=1e-7):
  """Probabilistic knowledge transfer: mean over all B x B entries of
  p_t log((p_t + eps) / (p_s + eps)), p from the cosine kernel (a mean, not a row-sum KL).

  Features [B, D] (more axes are flattened). Unlike the reference the norm has a zero
  gradient at an all-zero row, so zero features give a finite gradient.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> pkt = jax.jit(losses.pkt)
    >>> student = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # p_s rows [2/3, 1/3], [1/3, 2/3]
    >>> teacher = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # p_t all 1/2
    >>> print(round(float(pkt(student, teacher)), 4))
    0.0294
  """
  student_features, teacher_features = as_float32(student_features, frozen(teacher_features))
  p_s = _pkt_probabilities(student_features, eps)
  p_t = _pkt_probabilities(teacher_features, eps)
  return jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps)))


def _relative_distances(embeddings):
  """Pairwise distances sqrt(max(d^2, 1e-12)), diagonal 0, over their mean off the diagonal.

  mdistiller averages the entries > 0: with the clamp exactly the off-diagonal ones. With
  one sample there are none (NaN there); the zero matrix is returned instead.
  """
  squares = jnp.sum(jnp.square(embeddings), axis=1)
  squared = squares[:, None] + squares[None, :] - 2.0 * _gram(embeddings, embeddings)
  on_diagonal = jnp.eye(embeddings.shape[0], dtype=bool)
  distances = jnp.where(on_diagonal, 0.0, jnp.sqrt(jnp.maximum(squared, _RKD_PDIST_EPS)))
  positive = distances > 0
  count = jnp.sum(positive)
  mean = jnp.sum(jnp.where(positive, distances, 0.0)) / jnp.maximum(count, 1)
  return distances / jnp.where(count > 0, mean, 1.0)


def _angles(embeddings):
  """[i, j, k] = cos between e_j - e_i and e_k - e_i; 0 where a difference is 0."""
  unit = _normalize(embeddings[None, :, :] - embeddings[:, None, :])
  return _gram(unit, unit)


def _smooth_l1(x, y):
  """torch F.smooth_l1_loss, beta 1, mean."""
  d = x - y
  return jnp.mean(jnp.where(jnp.abs(d) < 1.0, 0.5 * jnp.square(d), jnp.abs(d) - 0.5))


def rkd(student_features, teacher_features, distance_weight=25.0, angle_weight=50.0):
  """Relational KD: distance_weight * smooth-L1(distances) + angle_weight * smooth-L1(angles).

  Distances are Euclidean (not squared), eps 1e-12, each set divided by its mean; angle
  cosines over all B^3 triples. Weights are mdistiller's CFG.RKD defaults. Batch-level.
  A batch of one gives 0 (mdistiller: NaN, its mean distance is over no pair).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> rkd = jax.jit(losses.rkd)
    >>> student = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> teacher = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> print(round(float(rkd(student, teacher)), 4))
    0.6522
    >>> print(round(float(rkd(student, 3.0 * student)), 4))  # scale does not matter
    0.0
  """
  student_features, teacher_features = as_float32(student_features, frozen(teacher_features))
  s = student_features.reshape(student_features.shape[0], -1)
  t = teacher_features.reshape(teacher_features.shape[0], -1)
  distance = _smooth_l1(_relative_distances(s), _relative_distances(t))
  angle = _smooth_l1(_angles(s), _angles(t))
  return distance_weight * distance + angle_weight * angle
