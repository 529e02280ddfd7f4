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
