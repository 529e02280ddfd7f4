"""The loop for host-fed data (ImageNet): the Trainer with batches from a grain pipeline.

Each host decodes and augments its slice of every global batch (kd_jax.data.imagenet);
the slices are assembled into one global array sharded over ('data',), normalised and
fed to the same jitted teacher + student step as CIFAR. The pipeline's position is saved
with every checkpoint, so a resumed run continues on the exact next batch.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kd_jax import train
from kd_jax.data import augment, imagenet
from kd_jax.errors import UserError


@dataclasses.dataclass
class HostDataset:
  """What the Trainer needs of a host-fed dataset."""
  train_iterator: Any  # imagenet.TrainIterator: get_state / set_state
  eval_batches: Any  # imagenet.EvalBatches
  num_train_examples: int
  num_classes: int
  image_size: int
  one_epoch: Any = None  # () -> a fresh one-epoch train iterator (ND's class-mean pass)
  mean: tuple = imagenet.IMAGENET_MEAN
  std: tuple = imagenet.IMAGENET_STD


def load(config) -> HostDataset:
  """The grain train iterator and eval batches of `config.data` (ImageNet)."""
  settings = config.data
  common = dict(source=settings.source, data_dir=settings.data_dir or None,
                image_size=settings.image_size, num_threads=settings.num_threads,
                worker_count=settings.worker_count)
  synthetic = dict(synthetic_size=settings.synthetic_train_size,
                   synthetic_image_shape=(settings.synthetic_image_size,) * 2)
  iterator = imagenet.make_train_iterator(config.batch_size, seed=config.seed, **common,
                                          **synthetic)
  eval_batches = imagenet.make_eval_batches(
      config.eval_batch_size, **common, synthetic_size=settings.synthetic_test_size,
      synthetic_image_shape=synthetic["synthetic_image_shape"])
  one_epoch = lambda: imagenet.make_train_iterator(  # pylint: disable=g-long-lambda
      config.batch_size, seed=config.seed, num_epochs=1, **common, **synthetic)
  return HostDataset(iterator, eval_batches, iterator.num_examples, imagenet.NUM_CLASSES,
                     settings.image_size, one_epoch)


class HostFedTrainer(train.Trainer):
  """train.Trainer whose batches come from the host pipeline (see the module docstring)."""

  def _num_train_examples(self):
    return self.dataset.num_train_examples

  def _setup_data(self, replicated):
    del replicated
    if self.method.num_views != 1:
      raise UserError(f"method {self.config.method.name!r} needs several views of each "
                      "image, which the ImageNet pipeline does not make")

  def _global(self, *local_arrays):
    """One global array per host-local batch slice, sharded over the 'data' axis."""
    return tuple(jax.make_array_from_process_local_data(self.batch_sharding, array)
                 for array in local_arrays)

  def _example_train_batch(self):
    size = self.dataset.image_size
    return (jax.ShapeDtypeStruct((self.batch_size, size, size, 3), jnp.uint8,
                                 sharding=self.batch_sharding),
            jax.ShapeDtypeStruct((self.batch_size,), jnp.int32, sharding=self.batch_sharding))

  def _train_batches(self, epoch):
    del epoch  # the iterator knows its position
    for batch in self.dataset.train_iterator:
      yield self._global(batch["image"], batch["label"].astype("int32"))

  def _views(self, step, images, labels):
    del step  # augmented on the host
    return [augment.normalize(images, self.mean, self.std)], labels

  def _test_batches(self):
    for batch in self.dataset.eval_batches:
      yield self._global(batch["image"], batch["label"].astype("int32"),
                         batch["mask"].astype("float32"))

  def _eval_inputs(self, images, labels, mask):
    return images, labels, mask

  def data_state(self):
    return self.dataset.train_iterator.get_state()

  def restore_data_state(self, state):
    if state is not None:
      self.dataset.train_iterator.set_state(state)
