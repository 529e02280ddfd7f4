"""KDSVD, knowledge distillation with singular value decomposition (Lee et al. ECCV 2018).

As mdistiller's `kdsvd_loss` (`mdistiller/distillers/KDSVD.py`; METHODS.md 9). Per stage
the map is viewed as mdistiller's NCHW `view(B, C*H, W)`: a (C*H) x W matrix per sample,
so its right singular vectors live in the width axis (the original TensorFlow code
takes H*W x C; mdistiller's view is followed). The teacher keeps its top K right singular
vectors, the student its top K+3, each aligned with sign to the teacher vector it is most
parallel to; both are scaled by the teacher's normalised singular values. Between
consecutive stages an RBF kernel exp(-(v_i[a] - v_{i-1}[b])^2 / 8) over all entry pairs is
compared (squared difference, summed, / B). Teacher side without gradient.

Differences from mdistiller, each only where its code errors or is backend-dependent:
  * torch.svd's sign of a singular vector is whatever the backend returns, and the loss
    compares vectors of two stages, so it depends on it. Here each teacher vector is
    oriented to a non-negative entry sum: for ReLU maps (non-negative matrices) the top
    vector has entries of one sign, so this is the orientation mdistiller gets whenever
    its backend orients two consecutive stages alike, and it is the same on CPU, GPU, TPU.
  * Stages of different spatial size (a student with other strides) are average-pooled
    to the smaller one first (mdistiller's matmul fails there), as AT and VID do.
  * The SVD gradient is the usual one with the terms of (near-)equal singular values
    dropped: torch's (and JAX's) are infinite or NaN there (e.g. a map of rank < W, whose
    zero singular values repeat), mdistiller's `removenan` guards only the forward.
"""
import jax
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen
from kd_jax.losses.feature_kd import pool_to_common_size

_HIGHEST = jax.lax.Precision.HIGHEST
_NORMALIZE_EPS = 1e-12  # torch F.normalize
_RBF_SCALE = 8.0  # mdistiller: exp(-d^2 / 8)


def _matmul(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _swap(x):
  return jnp.swapaxes(x, -1, -2)


def _svd(matrices):
  """jnp.linalg.svd(full_matrices=False) of [..., m, n]; on CPU one matrix at a time.

  jaxlib 0.10's CPU LAPACK kernels split a batch into chunks queued on a thread pool and
  block until they are done; with several CPU devices running batched SVDs at once
  every pool thread can end up waiting inside one (seen as a hang of the KDSVD train
  step on 8 simulated devices, never on 1, 2 or 4). One matrix per call (lax.map) has
  never hung. GPU and TPU keep the batched decomposition.
  """
  batched = lambda x: tuple(jnp.linalg.svd(x, full_matrices=False))

  def one_by_one(x):
    u, s, vt = jax.lax.map(batched, x.reshape(-1, *x.shape[-2:]))
    lead = x.shape[:-2]
    return (u.reshape(*lead, *u.shape[1:]), s.reshape(*lead, *s.shape[1:]),
            vt.reshape(*lead, *vt.shape[1:]))

  return jax.lax.platform_dependent(matrices, cpu=one_by_one, default=batched)


@jax.custom_jvp
def singular_values_and_right_vectors(matrices):
  """(s [..., r], V [..., n, r]) of matrices [..., m, n], r = min(m, n), s descending.

  Forward: jnp.linalg.svd. Derivative: JAX's SVD rule for s and V, except that the
  coupling 1 / (s_j^2 - s_i^2) of a pair of (relatively within float eps) equal singular
  values is taken as 0 instead of infinity, so repeated singular values (zero ones of a
  rank-deficient map, all of an all-zero map) give finite gradients. Away from such
  pairs it is the exact derivative.
  """
  _, s, vt = _svd(matrices)
  return s, _swap(vt)


@singular_values_and_right_vectors.defjvp
def _svd_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  u, s, vt = _svd(x)
  v = _swap(vt)
  dp = _matmul(_matmul(_swap(u), dx), v)  # U^T dX V, [..., r, r]
  ds = jnp.diagonal(dp, axis1=-2, axis2=-1)
  squares = jnp.square(s)
  gaps = squares[..., None, :] - squares[..., :, None]  # [i, j] = s_j^2 - s_i^2
  tolerance = jnp.finfo(s.dtype).eps * jnp.max(squares, axis=-1, keepdims=True)[..., None]
  coupled = jnp.abs(gaps) > tolerance
  coupling = jnp.where(coupled, 1.0 / jnp.where(coupled, gaps, 1.0), 0.0)
  s_dp = s[..., :, None] * dp  # diag(s) dP
  dv = _matmul(v, coupling * (s_dp + _swap(s_dp)))
  m, n = x.shape[-2:]
  if n > m:  # V has fewer columns than rows: the part outside its span
    s_inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
    dxt_u = _matmul(_swap(dx), u)
    dv = dv + (dxt_u - _matmul(v, _matmul(vt, dxt_u))) * s_inv[..., None, :]
  return (s, v), (ds, dv)


def _normalize(x, axis):
  """torch F.normalize: x / max(|x|, 1e-12) along `axis`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, _NORMALIZE_EPS)


def _finite(x):
  """mdistiller's removenan: non-finite entries to 0."""
  return jnp.where(jnp.isfinite(x), x, 0.0)


def top_singular(feature_map, n):
  """Top-n right singular vectors [B, W, n'] and values [B, n'] of an NHWC map viewed as
  mdistiller's NCHW view(B, C*H, W), each normalised as mdistiller; n' = min(n, rank dims)."""
  batch, height, width, channels = feature_map.shape
  matrices = jnp.transpose(feature_map, (0, 3, 1, 2)).reshape(batch, channels * height, width)
  s, v = singular_values_and_right_vectors(matrices)
  s, v = _finite(s), _finite(v)
  n = min(n, s.shape[-1])
  return _normalize(v[..., :n], axis=1), _normalize(s[..., :n], axis=1)


def _orient(vectors):
  """Flips each column [B, W, k] so that its entries sum to >= 0."""
  return vectors * jnp.where(jnp.sum(vectors, axis=1, keepdims=True) < 0, -1.0, 1.0)


def _align(student_vectors, teacher_vectors):
  """mdistiller's align_rsv: for each teacher vector, the student vector with the largest
  |cosine|, times the sign of that cosine (ties sum, as there). [B, W, k]."""
  cosine = _matmul(_swap(student_vectors), teacher_vectors)  # [B, k_s, k]
  best = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
  mask = jax.lax.stop_gradient(jnp.where(best == jnp.abs(cosine), jnp.sign(cosine), 0.0))
  return _matmul(student_vectors, mask)


def _rbf(vectors, previous):
  """exp(-(v[a] - v_prev[b])^2 / 8) for all entry pairs: [B, W_i, W_{i-1}, k]."""
  return jnp.exp(-jnp.square(vectors[:, :, None, :] - previous[:, None, :, :]) / _RBF_SCALE)


def kdsvd(student_maps, teacher_maps, k=1):
  """Sum over consecutive stage pairs of |RBF_s - RBF_t|^2 summed, / B (module docstring).

  student_maps, teacher_maps: sequences of NHWC maps (mdistiller uses feats[1:]), paired
  in order, as many as the shorter one has. Returns 0 for fewer than two stages.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> kdsvd = jax.jit(losses.kdsvd)
    >>> stage = lambda row: jnp.array(row).reshape(1, 1, 2, 1)  # one 1 x 2 matrix per stage,
    >>> # whose right singular vector is its row normalised: RBFs of [1, 0] -> [0, 1] (teacher)
    >>> # against [1, 1]/sqrt(2) -> [1, 2]/sqrt(5) (student)
    >>> student = [stage([1.0, 1.0]), stage([1.0, 2.0])]
    >>> teacher = [stage([1.0, 0.0]), stage([0.0, 1.0])]
    >>> print(round(float(kdsvd(student, teacher)), 4))
    0.0248
    >>> print(round(float(kdsvd(teacher, teacher)), 4))
    0.0
  """
  total, previous = jnp.float32(0.0), None
  batch = student_maps[0].shape[0]
  for student_map, teacher_map in zip(student_maps, teacher_maps):
    student_map, teacher_map = as_float32(student_map, frozen(teacher_map))
    student_map, teacher_map = pool_to_common_size(student_map, teacher_map)
    teacher_vectors, teacher_values = top_singular(teacher_map, k)
    teacher_vectors = _orient(teacher_vectors)
    student_vectors, _ = top_singular(student_map, k + 3)
    student_vectors = _align(student_vectors, teacher_vectors)
    scale = teacher_values[:, None, :]
    teacher_vectors, student_vectors = teacher_vectors * scale, student_vectors * scale
    if previous is not None:
      student_previous, teacher_previous = previous
      difference = jnp.square(_rbf(student_vectors, student_previous)
                              - frozen(_rbf(teacher_vectors, teacher_previous)))
      total = total + jnp.sum(_finite(difference)) / batch
    previous = student_vectors, teacher_vectors
  return total
