"""Independent NumPy (float64, loop-style) formulations of METHODS.md, for the loss tests.

Written from the spec text, not from kd_jax.losses, so a wrong formula in either shows.
"""
import numpy as np


def softmax(z, temperature=1.0):
  z = np.asarray(z, np.float64)
  t = np.asarray(temperature, np.float64)
  if t.ndim == 1:
    t = t[:, None]
  z = z / t
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def kl(p, q):
  """sum p log(p/q) with 0 log 0 = 0."""
  mask = p > 0
  return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def log_softmax(z, temperature=1.0):
  z = np.asarray(z, np.float64) / temperature
  shifted = z - z.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kd(zs, zt, T=4.0):
  """In log space so probabilities that underflow (logits +-1e4) still compare exactly."""
  log_ps, log_pt = log_softmax(zs, T), log_softmax(zt, T)
  return T * T * np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1))


def dkd(zs, zt, y, alpha=1.0, beta=8.0, T=4.0):
  ps, pt = softmax(zs, T), softmax(zt, T)
  batch, classes = ps.shape
  tckd = nckd = 0.0
  for b in range(batch):
    bt = np.array([pt[b, y[b]], 1 - pt[b, y[b]]])
    bs = np.array([ps[b, y[b]], 1 - ps[b, y[b]]])
    tckd += kl(bt, bs)
    g = np.zeros(classes)
    g[y[b]] = 1
    qt = softmax((np.asarray(zt[b:b + 1], np.float64) / T) - 1000 * g)[0]
    qs = softmax((np.asarray(zs[b:b + 1], np.float64) / T) - 1000 * g)[0]
    nckd += kl(qt, qs)
  return alpha * T * T / batch * tckd + beta * T * T / batch * nckd


def abs_cos(a, b, eps=1e-8):
  return abs(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def cskd(zs, zt, T):
  ps, pt = softmax(zs, T), softmax(zt, T)
  cosines = [abs_cos(ps[:, j], pt[:, j]) for j in range(ps.shape[1])]
  t_bar = np.mean(T)
  return t_bar**2 * (1 - np.mean(cosines))


def cswt(zs, zt, t_low=2.0, t_high=6.0):
  ps, pt = softmax(zs), softmax(zt)
  c = np.array([abs_cos(ps[i], pt[i]) for i in range(len(ps))])
  if c.max() - c.min() <= 1e-6:  # equal to float32 precision (documented in kd_jax)
    return np.full(len(c), (t_low + t_high) / 2)
  return t_low + (t_high - t_low) * (c.max() - c) / (c.max() - c.min())


def gram_distance(zs, zt, T, over_classes):
  ps, pt = softmax(zs, T), softmax(zt, T)
  if over_classes:
    gs, gt = ps.T @ ps, pt.T @ pt
  else:
    gs, gt = ps @ ps.T, pt @ pt.T
  return 1 - np.mean([abs_cos(gt[r], gs[r]) for r in range(len(gs))])



def consistency(zs, zt, T, over_classes):
  """MLKD's cc_loss / bc_loss: sum of squared Gram differences, one entry at a time,
  over the number of rows (classes for cc, samples for bc)."""
  ps, pt = softmax(zs, T), softmax(zt, T)
  if over_classes:
    ps, pt = ps.T, pt.T  # rows = classes: G[i, j] = sum_b p[b, i] p[b, j]
  rows = len(ps)
  total = 0.0
  for i in range(rows):
    for j in range(rows):
      total += (np.dot(pt[i], pt[j]) - np.dot(ps[i], ps[j])) ** 2
  return total / rows

def nd(fs, ft, means, y):
  total = 0.0
  for i in range(len(fs)):
    e = means[y[i]] / np.linalg.norm(means[y[i]])
    total += 1 - np.dot(fs[i], e) / max(np.linalg.norm(fs[i]), np.linalg.norm(ft[i]))
  return total / len(fs)


def pearson(a, b, eps=1e-8):
  a, b = a - a.mean(), b - b.mean()
  return np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def dist(zs, zt, beta=1.0, gamma=1.0, T=1.0):
  ps, pt = softmax(zs, T), softmax(zt, T)
  inter = 1 - np.mean([pearson(ps[i], pt[i]) for i in range(ps.shape[0])])
  intra = 1 - np.mean([pearson(ps[:, j], pt[:, j]) for j in range(ps.shape[1])])
  return T * T * (beta * inter + gamma * intra)


def logit_standardize(z, eps=1e-7):
  z = np.asarray(z, np.float64)
  return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + eps)


# ---------------------------------------------------------------- feature losses (METHODS.md 9)
# Inputs are kd_jax's NHWC arrays; each function moves them to NCHW first and then
# flattens the way the PyTorch code does, so a wrong axis order in kd_jax shows here.


def nchw(x):
  return np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))


def unit(v, eps=1e-12):
  """v / max(|v|, eps), torch F.normalize of one vector."""
  return v / max(np.sqrt(np.sum(v * v)), eps)


def adaptive_avg_pool_nchw(x, out_h, out_w):
  """Cell (i, j) averages rows floor(i*H/out_h) .. ceil((i+1)*H/out_h) - 1, likewise columns."""
  n, c, h, w = x.shape
  out = np.zeros((n, c, out_h, out_w))
  for i in range(out_h):
    h0, h1 = int(np.floor(i * h / out_h)), int(np.ceil((i + 1) * h / out_h))
    for j in range(out_w):
      w0, w1 = int(np.floor(j * w / out_w)), int(np.ceil((j + 1) * w / out_w))
      out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
  return out


def _pool_larger_by_height(fs, ft):
  """The larger-H map pooled to (H, H) of the smaller, as the AT/NST reference code."""
  if fs.shape[2] > ft.shape[2]:
    fs = adaptive_avg_pool_nchw(fs, ft.shape[2], ft.shape[2])
  elif fs.shape[2] < ft.shape[2]:
    ft = adaptive_avg_pool_nchw(ft, fs.shape[2], fs.shape[2])
  return fs, ft


def at(fs, ft, p=2.0):
  fs, ft = _pool_larger_by_height(nchw(fs), nchw(ft))
  total, count = 0.0, 0
  for b in range(fs.shape[0]):
    a_s = unit((fs[b] ** p).mean(axis=0).ravel())  # [H, W] row-major
    a_t = unit((ft[b] ** p).mean(axis=0).ravel())
    total += np.sum((a_s - a_t) ** 2)
    count += a_s.size
  return total / count


def nst(fs, ft):
  fs, ft = _pool_larger_by_height(nchw(fs), nchw(ft))
  batch = fs.shape[0]
  vs = [[unit(fs[b, c].ravel()) for c in range(fs.shape[1])] for b in range(batch)]
  vt = [[unit(ft[b, c].ravel()) for c in range(ft.shape[1])] for b in range(batch)]

  def mean_kernel(x, y):
    return np.mean([np.dot(x[b][i], y[b][j]) ** 2
                    for b in range(batch) for i in range(len(x[b])) for j in range(len(y[b]))])

  return mean_kernel(vt, vt) + mean_kernel(vs, vs) - 2 * mean_kernel(vs, vt)


def sp(fs, ft):
  batch = fs.shape[0]
  fs, ft = nchw(fs).reshape(batch, -1), nchw(ft).reshape(batch, -1)
  gs = np.stack([unit(row) for row in fs @ fs.T])
  gt = np.stack([unit(row) for row in ft @ ft.T])
  return np.sum((gt - gs) ** 2) / batch**2


def pkt(fs, ft, eps=1e-7):
  def probabilities(f):
    f = np.asarray(f, np.float64).reshape(len(f), -1)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
    k = np.array([[(np.dot(f[i], f[j]) + 1) / 2 for j in range(len(f))] for i in range(len(f))])
    return k / k.sum(axis=1, keepdims=True)

  p_s, p_t = probabilities(fs), probabilities(ft)
  return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def smooth_l1(x, y):
  d = np.abs(np.asarray(x) - np.asarray(y))
  return np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))


def rkd(fs, ft, distance_weight=25.0, angle_weight=50.0, eps=1e-12):
  """Batch >= 2 (one sample: no off-diagonal distance to average)."""
  def relative_distances(e):
    n = len(e)
    d = np.zeros((n, n))
    for i in range(n):
      for j in range(n):
        if i != j:
          d[i, j] = np.sqrt(max(np.sum((e[i] - e[j]) ** 2), eps))
    return d / d[~np.eye(n, dtype=bool)].mean()

  def angles(e):
    n = len(e)
    return np.array([[[np.dot(unit(e[j] - e[i]), unit(e[k] - e[i])) for k in range(n)]
                      for j in range(n)] for i in range(n)])

  fs = np.asarray(fs, np.float64).reshape(len(fs), -1)
  ft = np.asarray(ft, np.float64).reshape(len(ft), -1)
  return (distance_weight * smooth_l1(relative_distances(fs), relative_distances(ft))
          + angle_weight * smooth_l1(angles(fs), angles(ft)))


def hcl(student_maps, teacher_maps):
  """ReviewKD's hierarchical context loss, level by level in NCHW (mdistiller hcl_loss)."""
  total = 0.0
  for fs, ft in zip(student_maps, teacher_maps):
    fs, ft = nchw(fs), nchw(ft)
    height = fs.shape[2]
    level, weight, weights = np.mean((fs - ft) ** 2), 1.0, 1.0
    for size in (4, 2, 1):
      if size >= height:
        continue
      weight /= 2.0
      level += weight * np.mean((adaptive_avg_pool_nchw(fs, size, size)
                                 - adaptive_avg_pool_nchw(ft, size, size)) ** 2)
      weights += weight
    total += level / weights
  return total


# ------------------------------------------------- VID, KDSVD, OFD (METHODS.md 9, mdistiller)


def vid(mean, ft, log_scale, eps=1e-5):
  """mdistiller vid_loss after the regressor: NCHW, teacher pooled to (H, H) when larger."""
  mean, ft = nchw(mean), nchw(ft)
  if ft.shape[2] > mean.shape[2]:
    ft = adaptive_avg_pool_nchw(ft, mean.shape[2], mean.shape[2])
  var = np.log(1.0 + np.exp(np.asarray(log_scale, np.float64))) + eps
  var = var.reshape(1, -1, 1, 1)
  return np.mean(0.5 * ((mean - ft) ** 2 / var + np.log(var)))


def _svd_view(f, n):
  """mdistiller svd(): NCHW view(B, C*H, W), normalised top-n right vectors and values."""
  f = nchw(f)
  b, c, h, w = f.shape
  vectors, values = [], []
  for x in f.reshape(b, c * h, w):
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(n, len(s))
    v = vt[:k].T  # [W, k]
    vectors.append(v / np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-12))
    values.append(s[:k] / max(np.linalg.norm(s[:k]), 1e-12))
  return np.stack(vectors), np.stack(values)


def kdsvd(student_maps, teacher_maps, k=1):
  """mdistiller kdsvd_loss, teacher vectors oriented to a non-negative sum (kd_jax), maps of
  unequal size pooled to the smaller (kd_jax)."""
  losses, previous = [], None
  batch = np.asarray(student_maps[0]).shape[0]
  for fs, ft in zip(student_maps, teacher_maps):
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    if fs.shape[1] != ft.shape[1]:
      small = min(fs.shape[1], ft.shape[1])
      pool = lambda f: np.transpose(adaptive_avg_pool_nchw(nchw(f), small, small), (0, 2, 3, 1))
      fs, ft = (pool(fs) if fs.shape[1] > small else fs), (pool(ft) if ft.shape[1] > small else ft)
    v_t, s_t = _svd_view(ft, k)
    v_t = v_t * np.where(v_t.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    v_s, _ = _svd_view(fs, k + 3)
    aligned = np.zeros_like(v_t)
    for b in range(batch):
      for j in range(v_t.shape[2]):
        cosines = v_s[b].T @ v_t[b, :, j]
        best = np.argmax(np.abs(cosines))
        aligned[b, :, j] = np.sign(cosines[best]) * v_s[b, :, best]
    v_s = aligned * s_t[:, None, :]
    v_t = v_t * s_t[:, None, :]
    if previous is not None:
      v_sb, v_tb = previous
      rbf = lambda a, c: np.exp(-(a[:, :, None, :] - c[:, None, :, :]) ** 2 / 8)
      losses.append(np.sum((rbf(v_s, v_sb) - rbf(v_t, v_tb)) ** 2))
    previous = v_s, v_t
  return sum(loss / batch for loss in losses)


def ofd_margin(scale, bias):
  """mdistiller init_ofd_modules, channel by channel in Python floats."""
  import math  # pylint: disable=g-import-not-at-top
  margins = []
  for s, m in zip(np.asarray(scale, np.float64), np.asarray(bias, np.float64)):
    s = abs(float(s))
    cdf = 0.5 * math.erfc((m / s) / math.sqrt(2))  # norm.cdf(-m / s)
    if cdf > 0.001:
      margins.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m)
    else:
      margins.append(-3 * s)
  return np.asarray(margins)


def ofd(fs, ft, margin):
  """mdistiller feat_loss on NCHW, the teacher pooled to the student's H x W."""
  fs = nchw(fs)
  ft = adaptive_avg_pool_nchw(nchw(ft), fs.shape[2], fs.shape[3])
  m = np.asarray(margin, np.float64).reshape(1, -1, 1, 1)
  loss = ((fs - m) ** 2 * ((fs > m) & (ft <= m))
          + (fs - ft) ** 2 * ((fs > ft) & (ft > m) & (ft <= 0))
          + (fs - ft) ** 2 * (ft > 0))
  return np.abs(loss).mean(axis=0).sum()


def central_differences(f, x, eps=1e-6):
  """d f / d x of a scalar NumPy function, by central differences in float64."""
  x = np.array(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[index] += eps
    down[index] -= eps
    grad[index] = (f(up) - f(down)) / (2 * eps)
  return grad
