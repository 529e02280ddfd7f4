"""Deterministic batch order for device-resident data.

The order of an epoch is a function of (seed, epoch) only, so a resumed run sees the
same batches as an uninterrupted one, every host of a pod computes the same order
without talking, and the same code runs on the host or inside jit.
"""
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import UserError

# Folded into the seed first, so the data order is not the stream that the same seed
# gives for initialisation or augmentation keys.
_DATA_ORDER_STREAM = 0x0DA7A0


def epoch_permutation(seed, epoch, num_examples: int):
  """A permutation (int32 [num_examples]) of the training set for this epoch.

  `seed` and `epoch` may be Python ints or traced scalars; `num_examples` is static.
  """
  key = jax.random.fold_in(jax.random.key(seed), _DATA_ORDER_STREAM)
  key = jax.random.fold_in(key, epoch)
  return jax.random.permutation(key, num_examples).astype(jnp.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps per epoch; the last incomplete batch is dropped.

  Dropping keeps every step's batch shape fixed (one compilation, global-batch losses
  and BatchNorm see a full batch); the dropped samples differ from epoch to epoch.
  """
  if batch_size < 1:
    raise UserError(f'batch_size must be >= 1, got {batch_size}')
  if num_examples < batch_size:
    raise UserError(f'batch_size={batch_size} is larger than the training set '
                    f'({num_examples} examples)')
  return num_examples // batch_size


def batch_indices(permutation, step_in_epoch, batch_size: int):
  """Indices of batch `step_in_epoch` (traceable) of an epoch's permutation."""
  return jax.lax.dynamic_slice_in_dim(permutation, step_in_epoch * batch_size, batch_size)


def eval_batches(num_examples: int, batch_size: int):
  """Evaluation batches covering each example exactly once: a list of (index, mask).

  index is int32 [batch_size]; the last batch is padded with index 0 and mask False, so
  every batch has one shape and sums weighted by the mask count each example once.
  """
  if batch_size < 1:
    raise UserError(f'eval batch_size must be >= 1, got {batch_size}')
  num_batches = -(-num_examples // batch_size)
  flat = np.zeros(num_batches * batch_size, np.int32)
  flat[:num_examples] = np.arange(num_examples, dtype=np.int32)
  mask = np.arange(num_batches * batch_size) < num_examples
  return list(zip(flat.reshape(num_batches, batch_size),
                  mask.reshape(num_batches, batch_size)))
