"""The narrow interface between a distillation method and the train step.

A method is a frozen dataclass built from `config.method`; the train step calls
`method.loss(student, teacher, labels, epoch)` inside its one jit, where `student` and
`teacher` are `ModelOutput`s (teacher is None when `needs_teacher` is False) and `epoch`
is the 0-based epoch index as a traced integer (for warm-ups). It returns the total loss
and a dict of scalars to log: each loss term weighted as it enters the total, plus any
diagnostics (e.g. the mean CSWT temperature) that are not part of the total.
"""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ModelOutput(NamedTuple):
  """What a kd_jax model returns: logits [B, C] and features ({'pooled': [B, d], ...})."""
  logits: jax.Array
  features: dict[str, Any]


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def linear_warmup(epoch, warmup_epochs):
  """min(epoch / warmup, 1); callers choose whether epochs count from 0 or from 1."""
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0)


@dataclasses.dataclass(frozen=True)
class Method:
  """Base class: subclasses declare their config fields as dataclass fields."""
  needs_teacher = True

  def loss(self, student: ModelOutput, teacher: ModelOutput | None, labels, epoch):
    raise NotImplementedError
