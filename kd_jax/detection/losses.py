"""The detector's loss primitives (float32), as detectron2 / fvcore compute them."""
import jax
import jax.numpy as jnp


def smooth_l1(x, beta):
  """fvcore smooth_l1_loss elementwise on x = input - target; beta < 1e-5 is plain L1."""
  abs_x = jnp.abs(x)
  if beta < 1e-5:
    return abs_x
  return jnp.where(abs_x < beta, 0.5 * x * x / beta, abs_x - 0.5 * beta)


def binary_cross_entropy_with_logits(logits, targets):
  """F.binary_cross_entropy_with_logits, elementwise, in the stable form."""
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def cross_entropy(logits, labels):
  """F.cross_entropy per row (no reduction)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
