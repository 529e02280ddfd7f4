"""Random positive/negative subsampling with static shapes (detectron2/modeling/sampling.py).

detectron2's `subsample_labels` draws `torch.randperm` subsets of the positive and negative
indices. Here every element gets a distinct random priority (a uniform random permutation,
so no ties) and the `k` highest-priority eligible elements are chosen with `lax.top_k`:
the same distribution (a uniform subset of each set, of detectron2's sizes), static shapes,
and deterministic for a given key.
"""
import jax
import jax.numpy as jnp


def _priorities(key, size):
  """A uniformly random ranking: distinct int32 values 0..size-1."""
  return jnp.zeros(size, jnp.int32).at[jax.random.permutation(key, size)].set(
      jnp.arange(size, dtype=jnp.int32))


def _choose(priority, eligible, count, k):
  """Indices [k] of the top-priority eligible elements and whether slot i < count is filled."""
  top, indices = jax.lax.top_k(jnp.where(eligible, priority, -1), k)
  return indices, (top >= 0) & (jnp.arange(k) < count)


def _counts(labels, valid, num_samples, positive_fraction, bg_label):
  positive = valid & (labels != -1) & (labels != bg_label)
  negative = valid & (labels == bg_label)
  num_pos = jnp.minimum(jnp.sum(positive), int(num_samples * positive_fraction))
  num_neg = jnp.minimum(jnp.sum(negative), num_samples - num_pos)
  return positive, negative, num_pos, num_neg


def subsample_labels(key, labels, valid, num_samples, positive_fraction, bg_label):
  """(pos_mask [N], neg_mask [N]) as sampling.py `subsample_labels` (RPN: labels in {-1,0,1}).

  Positives are labels not -1 and not bg_label; at most int(num_samples * positive_fraction)
  of them, the rest of `num_samples` filled with negatives (label bg_label) where possible.
  Only elements with `valid` are eligible (padding is never sampled).
  """
  positive, negative, num_pos, num_neg = _counts(labels, valid, num_samples,
                                                 positive_fraction, bg_label)
  size = labels.shape[0]
  k = min(num_samples, size)
  pos_key, neg_key = jax.random.split(key)
  pos_idx, pos_ok = _choose(_priorities(pos_key, size), positive, num_pos, k)
  neg_idx, neg_ok = _choose(_priorities(neg_key, size), negative, num_neg, k)
  pos_mask = jnp.zeros(size, bool).at[pos_idx].max(pos_ok)
  neg_mask = jnp.zeros(size, bool).at[neg_idx].max(neg_ok)
  return pos_mask, neg_mask


def sample_indices(key, labels, valid, num_samples, positive_fraction, bg_label):
  """(indices [num_samples] int32, valid [num_samples]): the ROI-head sample.

  As detectron2's StandardROIHeads._sample_proposals: the sampled positives first, then the
  sampled negatives (torch.cat([fg, bg])), then padding slots (index 0, valid False) where
  fewer than num_samples could be drawn. Random order within each group, as randperm.
  """
  positive, negative, num_pos, num_neg = _counts(labels, valid, num_samples,
                                                 positive_fraction, bg_label)
  size = labels.shape[0]
  k = min(num_samples, size)
  pos_key, neg_key = jax.random.split(key)
  pos_idx, _ = _choose(_priorities(pos_key, size), positive, num_pos, k)
  neg_idx, _ = _choose(_priorities(neg_key, size), negative, num_neg, k)
  slot = jnp.arange(num_samples)
  from_pos = slot < num_pos
  from_neg = ~from_pos & (slot < num_pos + num_neg)
  pos_pick = pos_idx[jnp.clip(slot, 0, k - 1)]
  neg_pick = neg_idx[jnp.clip(slot - num_pos, 0, k - 1)]
  indices = jnp.where(from_pos, pos_pick, jnp.where(from_neg, neg_pick, 0)).astype(jnp.int32)
  return indices, from_pos | from_neg
