"""ND's teacher class means: one pass of the frozen teacher, cached beside its checkpoint."""
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from kd_jax import losses, models
from kd_jax.data import augment, batching


def teacher_class_means(teacher, dataset, mesh, seed, batch_size):
  """Per-class mean of the teacher's pooled features over the augmented training split.

  Teacher in eval mode, one pass with the training augmentation (crop + flip), every
  example counted once (padding masked out), global over all devices (METHODS.md 5).
  """
  graphdef, state = nnx.split(teacher)
  images, labels = dataset.train_images, dataset.train_labels
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  batch_sharding = NamedSharding(mesh, P("data"))

  @jax.jit
  def batch_sums(state, images, labels, index, valid, key):
    index = jax.lax.with_sharding_constraint(index, batch_sharding)
    inputs = augment.normalize(augment.random_crop_flip(key, images[index]), mean, std)
    _, features = nnx.merge(graphdef, state)(inputs, train=False)
    targets = jnp.where(valid, labels[index], -1)  # -1: one-hot of zeros, not counted
    return losses.class_sums(features["pooled"], targets, dataset.num_classes)

  images, labels = jax.device_put((images, labels), NamedSharding(mesh, P()))
  key = jax.random.fold_in(jax.random.key(seed), 0xC1A55)
  sums = counts = 0.0
  for number, (index, valid) in enumerate(batching.eval_batches(len(labels), batch_size)):
    batch_sum, batch_count = batch_sums(state, images, labels, index, valid,
                                        jax.random.fold_in(key, number))
    sums, counts = sums + batch_sum, counts + batch_count
  return np.asarray(sums / jnp.maximum(counts, 1.0)[:, None])


def teacher_class_means_host(teacher, dataset, mesh):
  """The same pass over a host-fed dataset (ImageNet): one epoch of its training
  pipeline (augmented as for training; the last partial batch is dropped)."""
  graphdef, state = nnx.split(teacher)
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)
  batch_sharding = NamedSharding(mesh, P("data"))

  @jax.jit
  def batch_sums(state, images, labels):
    inputs = augment.normalize(images, mean, std)
    _, features = nnx.merge(graphdef, state)(inputs, train=False)
    return losses.class_sums(features["pooled"], labels, dataset.num_classes)

  sums = counts = 0.0
  for batch in dataset.one_epoch():
    images, labels = (jax.make_array_from_process_local_data(batch_sharding, array)
                      for array in (batch["image"], batch["label"].astype(np.int32)))
    batch_sum, batch_count = batch_sums(state, images, labels)
    sums, counts = sums + batch_sum, counts + batch_count
  return np.asarray(sums / jnp.maximum(counts, 1.0)[:, None])


def dataset_size(dataset):
  return (len(dataset.train_labels) if hasattr(dataset, "train_labels")
          else dataset.num_train_examples)


def cached_class_means(config, teacher, teacher_path, dataset, mesh, workdir):
  """Teacher class means, computed once per (teacher, dataset) and cached beside the
  teacher checkpoint (or in the workdir when that place is read-only)."""
  name = (f"class_means.{config.data.dataset}.{config.data.source}."
          f"{dataset_size(dataset)}.npy")
  beside = (os.path.join(teacher_path, name) if os.path.isdir(teacher_path)
            else f"{teacher_path}.{name}")
  places = [beside, os.path.join(workdir, name)]
  expected = (dataset.num_classes, models.pooled_dim(config.teacher.model))
  for path in places:
    if os.path.exists(path):
      means = np.load(path)
      if means.shape == expected:
        logging.info("teacher class means from %s", path)
        return means
  logging.info("computing the teacher's class means over the training split")
  if hasattr(dataset, "train_images"):
    means = teacher_class_means(teacher, dataset, mesh, config.seed, config.eval_batch_size)
  else:
    means = teacher_class_means_host(teacher, dataset, mesh)
  for path in places:
    try:
      np.save(path, means)
      break
    except OSError:
      continue
  return means
