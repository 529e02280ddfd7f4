"""Numerical helpers shared by the losses: float32 casting and norms safe at zero."""
import jax
import jax.numpy as jnp


def as_float32(*arrays):
  """Casts inputs up to float32 (bfloat16 logits would lose the softmax tail)."""
  return tuple(jnp.asarray(a).astype(jnp.float32) for a in arrays)


def safe_sqrt(x):
  """sqrt with a zero (not infinite) gradient at 0, so an all-zero vector stays finite."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def l2_norm(x, axis):
  return safe_sqrt(jnp.sum(jnp.square(x), axis=axis))


def abs_cosine(a, b, axis, eps=1e-8):
  """|<a, b>| / (|a| |b| + eps) along `axis`: the eps on the product, as the CSKD code."""
  dot = jnp.sum(a * b, axis=axis)
  return jnp.abs(dot) / (l2_norm(a, axis) * l2_norm(b, axis) + eps)


def frozen(x):
  """Teacher-side values never carry gradient."""
  return jax.lax.stop_gradient(x)
