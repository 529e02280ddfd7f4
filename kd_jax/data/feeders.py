"""Feeders: where the train step's batches come from, behind one small protocol.

A feeder gives the loop
  info                        DataInfo: classes, mean/std, image size, split sizes
  steps_per_epoch
  train_batches(epoch)        host side: the step's `batch` argument, step after step
  example_train_batch()       one such batch (or its shapes), to trace the step
  train_inputs(batch, step, method)   jit side: (uint8 views, labels, dataset indices)
  eval_batches()              the test split, each example once (padded, masked)
  train_pass()                one pass over the training split, plainly augmented (crop + flip)
  train_labels()              int32 [num_train]: the label of each training example, by index
  pass_inputs(batch)          jit side of both passes: (uint8 images, labels, float mask)
  state() / restore(state)    its position, saved with checkpoints (JSON or None)

Two kinds: `DeviceFeeder` keeps the whole split on the devices and gathers + augments
inside the step (CIFAR); `HostFeeder` decodes and augments on the host with grain and
hands over global arrays sharded over ('data',) (ImageNet, image folders). Which one a
dataset uses is the `DATASETS` table; adding a dataset is a loader and a row there.
"""
import copy
import dataclasses
from collections import abc
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from kd_jax.data import augment, batching, cifar, detection_feeder, image_folder, imagenet
from kd_jax.data import parallelism
from kd_jax.errors import UserError

_CLASS_MEAN_STREAM = 0xC1A55  # key stream of the training-split pass's augmentation


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the rest of the code may know about a dataset."""
  name: str
  source: str
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  image_size: int
  num_train: int
  num_test: int

  @property
  def cache_key(self):
    """Names caches of per-dataset results (e.g. teacher class means)."""
    return f"{self.name}.{self.source}.{self.num_train}"


@dataclasses.dataclass(frozen=True)
class HostData:
  """A host-fed dataset: random-access records {'image': encoded bytes or uint8 array,
  'label'} of both splits, and the constants to normalise its images with."""
  train: abc.Sequence
  test: abc.Sequence
  num_classes: int
  mean: tuple[float, float, float] = imagenet.IMAGENET_MEAN
  std: tuple[float, float, float] = imagenet.IMAGENET_STD
  skipped: tuple[str, ...] = ()  # files the loader left out (config.data.bad_images='skip')


_seeds_permutations = jax.jit(jax.vmap(batching.epoch_permutation, in_axes=(0, None, None)),
                              static_argnums=2)


def _batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


class DeviceFeeder:
  """The whole split on the devices; each step gathers its batch by index from a
  per-epoch permutation and augments it inside the jit, so the host only dispatches."""
  task = "classification"

  def __init__(self, dataset: cifar.Dataset, config, mesh):
    self.info = DataInfo(config.data.dataset, config.data.source, dataset.num_classes,
                         tuple(dataset.mean), tuple(dataset.std), dataset.train_images.shape[1],
                         len(dataset.train_labels), len(dataset.test_labels))
    self._seed, self._batch_size = config.seed, config.batch_size
    self._eval_batch_size = config.eval_batch_size
    self.steps_per_epoch = batching.steps_per_epoch(self.info.num_train, self._batch_size)
    self._sharding = _batch_sharding(mesh)
    self._replicated = replicated = NamedSharding(mesh, P())
    self._train_labels = np.asarray(dataset.train_labels, np.int32)
    self._train = jax.device_put({"images": dataset.train_images,
                                  "labels": dataset.train_labels}, replicated)
    self._test = jax.device_put({"images": dataset.test_images,
                                 "labels": dataset.test_labels}, replicated)
    seed, size = self._seed, self.info.num_train
    self._permutation = jax.jit(lambda epoch: batching.epoch_permutation(seed, epoch, size),
                                out_shardings=replicated)

  def _over_data(self, index):
    """The batch's indices split over the 'data' mesh axis. Inside kd_jax.seeds'
    shard_map (a mesh in context, its 'seed' axis manual) by the axis name alone."""
    if not jax.sharding.get_abstract_mesh().empty:
      return jax.lax.with_sharding_constraint(index, P("data"))
    return jax.lax.with_sharding_constraint(index, self._sharding)

  def train_batches(self, epoch):
    batch = self._train | {"permutation": self._permutation(epoch)}
    while True:
      yield batch

  def example_train_batch(self):
    return next(self.train_batches(0))

  # Seeds in one program (kd_jax.seeds): the split once, each seed's order and seed
  # stacked on a leading axis that the vmapped step maps over (None: shared).
  SEEDS_BATCH_AXES = {"images": None, "labels": None, "permutation": 0, "seed": 0}

  def for_seed(self, seed):
    """This feeder with another seed (its order, augmentation, training-split pass),
    sharing the split already on the devices."""
    other = copy.copy(self)
    other._seed, size = seed, self.info.num_train  # pylint: disable=protected-access
    other._permutation = jax.jit(lambda epoch: batching.epoch_permutation(seed, epoch, size),
                                 out_shardings=self._replicated)  # pylint: disable=protected-access
    return other

  def seeds_train_batches(self, epoch, seeds):
    """train_batches of several seeds at once (axes: SEEDS_BATCH_AXES); `seeds` is int32
    [N] on the devices, its sharding (over a 'seed' mesh axis) that of each seed's order."""
    batch = self._train | {"permutation": _seeds_permutations(seeds, epoch, self.info.num_train),
                           "seed": seeds}
    while True:
      yield batch

  def train_inputs(self, batch, step, method):
    index = batching.batch_indices(batch["permutation"], step % self.steps_per_epoch,
                                   self._batch_size)
    index = self._over_data(index)
    seed = batch.get("seed", self._seed)  # traced per seed in a program of several seeds
    key = jax.random.fold_in(jax.random.key(seed), step)
    return method.views(key, batch["images"][index]), batch["labels"][index], index

  def _pass(self, split, size, key=None):
    for number, (index, mask) in enumerate(batching.eval_batches(size, self._eval_batch_size)):
      batch = split | {"index": jnp.asarray(index), "mask": jnp.asarray(mask, jnp.float32)}
      yield batch if key is None else batch | {"key": jax.random.fold_in(key, number)}

  def eval_batches(self):
    return self._pass(self._test, self.info.num_test)

  def train_pass(self):
    key = jax.random.fold_in(jax.random.key(self._seed), _CLASS_MEAN_STREAM)
    return self._pass(self._train, self.info.num_train, key)

  def pass_inputs(self, batch):
    index = self._over_data(batch["index"])
    images = batch["images"][index]
    if "key" in batch:  # the training split, augmented as for training
      images = augment.random_crop_flip(batch["key"], images)
    return images, batch["labels"][index], batch["mask"]

  def train_labels(self):
    return self._train_labels

  def state(self):
    return None  # the order is a function of (seed, epoch): nothing to save

  def restore(self, state):
    del state


class HostFeeder:
  """Each host decodes and augments its slice of every global batch (a grain pipeline,
  kd_jax.data.imagenet); the slices become one global array sharded over ('data',). The
  pipeline's position is saved with every checkpoint, so a resumed run continues on the
  exact next batch. An image that does not decode stops the run naming its file, or with
  config.data.bad_images='skip' is skipped (kd_jax.data.imagenet) and counted:
  `skipped_images` is the number of distinct files skipped so far in this session."""
  task = "classification"

  def __init__(self, host_data: HostData, config, mesh):
    settings = config.data
    self._sharding = _batch_sharding(mesh)
    self._pipeline = dict(image_size=settings.image_size, num_threads=settings.num_threads,
                          worker_count=settings.worker_count,
                          interpolation=settings.get("interpolation", "bilinear"))
    # RandAugment (if any) fills with the normalisation mean, as timm's create_transform.
    self._augment = dict(train_augment=settings.get("train_augment", imagenet.CROP_FLIP),
                         mean=tuple(host_data.mean))
    threads, workers = imagenet.host_parallelism(settings.num_threads, settings.worker_count)
    logging.info("host pipeline: %d decode thread(s) %s (%d usable cores)", threads,
                 f"in each of {workers} worker processes" if workers else "in this process",
                 parallelism.usable_cores())
    logging.info("host pipeline: train augmentation %s, %s resizing",
                 self._augment["train_augment"], self._pipeline["interpolation"])
    self._train_records, self._batch_size, self._seed = (host_data.train, config.batch_size,
                                                         config.seed)
    self._test_records = host_data.test
    self._bad_images = settings.get("bad_images", "stop")
    self._skipped = set(host_data.skipped)
    self._iterator = imagenet.make_train_iterator(config.batch_size, seed=config.seed,
                                                  records=host_data.train, **self._pipeline,
                                                  **self._augment, bad_images=self._bad_images)
    self._eval = imagenet.make_eval_batches(config.eval_batch_size, records=host_data.test,
                                            **self._pipeline)
    self.steps_per_epoch = self._iterator.steps_per_epoch
    self.info = DataInfo(settings.dataset, settings.source, host_data.num_classes,
                         tuple(host_data.mean), tuple(host_data.std), settings.image_size,
                         len(host_data.train), len(host_data.test))

  def _global(self, batch, with_mask=False):
    """Host-local slices -> global arrays over the 'data' axis."""
    arrays = {"image": batch["image"], "label": batch["label"].astype(np.int32),
              "index": batch["index"].astype(np.int32)}
    if with_mask:
      arrays["mask"] = batch.get("mask", np.ones(len(batch["label"]), bool)).astype(np.float32)
    return {name: jax.make_array_from_process_local_data(self._sharding, array)
            for name, array in arrays.items()}

  @property
  def skipped_images(self):
    return len(self._skipped)

  def _check_bad(self, batch, records):
    """Stops naming the first file in `batch` that did not decode, or ('skip') names each
    such file once in the log."""
    for index in np.unique(batch["bad"][batch["bad"] != imagenet.NOT_BAD]):
      name = imagenet.record_name(records, int(index))
      if self._bad_images != "skip":
        raise UserError(f"{name} cannot be decoded as an image (truncated, damaged or another "
                        "format); replace or remove it, or set config.data.bad_images='skip' "
                        "to skip such files")
      if name not in self._skipped:
        self._skipped.add(name)
        logging.warning("skipped image %s: it cannot be decoded", name)

  def train_batches(self, epoch):
    del epoch  # the iterator knows its position
    for batch in self._iterator:
      self._check_bad(batch, self._train_records)
      yield self._global(batch)

  def example_train_batch(self):
    size = self.info.image_size
    shape = lambda *s, dtype=jnp.int32: jax.ShapeDtypeStruct(  # pylint: disable=g-long-lambda
        (self._batch_size, *s), dtype, sharding=self._sharding)
    return {"image": shape(size, size, 3, dtype=jnp.uint8), "label": shape(), "index": shape()}

  def train_inputs(self, batch, step, method):
    del step  # augmented on the host
    if method.num_views != 1:
      raise UserError(f"this method needs {method.num_views} views of each image, which "
                      "host-fed datasets (augmented on the host) do not make")
    return [batch["image"]], batch["label"], batch["index"]

  def eval_batches(self):
    for batch in self._eval:
      self._check_bad(batch, self._test_records)
      yield self._global(batch, with_mask=True)

  def train_pass(self):
    """One epoch of plain training crops: random resized crop (bilinear) + flip, whatever
    the run's own augmentation (the last partial batch dropped). The ND authors take
    every teacher's class means over this pipeline, DeiT's RegNetY included
    (ImageNet/emb_fea_distribution.py with their ImageNet Dataset)."""
    plain = dict(self._pipeline, interpolation="bilinear")
    one_epoch = imagenet.make_train_iterator(self._batch_size, seed=self._seed, num_epochs=1,
                                             records=self._train_records, **plain,
                                             train_augment=imagenet.CROP_FLIP,
                                             mean=self._augment["mean"],
                                             bad_images=self._bad_images)
    for batch in one_epoch:
      self._check_bad(batch, self._train_records)
      yield self._global(batch, with_mask=True)

  def pass_inputs(self, batch):
    return batch["image"], batch["label"], batch["mask"]

  def train_labels(self):
    """The records' labels, by dataset index (reads every training record once)."""
    records = self._train_records
    return np.asarray([int(records[i]["label"]) for i in range(len(records))], np.int32)

  def state(self):
    return self._iterator.get_state()

  def restore(self, state):
    if state is not None:
      self._iterator.set_state(state)


# --------------------------------------------------------------------------- datasets


def _load_cifar(config):
  settings = config.data
  return cifar.load(settings.dataset, settings.source, settings.data_dir or None,
                    synthetic_train_size=settings.synthetic_train_size,
                    synthetic_test_size=settings.synthetic_test_size)


def _load_imagenet(config):
  settings = config.data
  common = dict(source=settings.source, data_dir=settings.data_dir or None,
                synthetic_image_shape=(settings.synthetic_image_size,) * 2)
  return HostData(
      train=imagenet.open_split("train", synthetic_size=settings.synthetic_train_size, **common),
      test=imagenet.open_split("validation", synthetic_size=settings.synthetic_test_size,
                               **common),
      num_classes=imagenet.NUM_CLASSES)


def _load_image_folder(config):
  settings = config.data
  splits = image_folder.load(settings.data_dir, settings.train_split, settings.test_split,
                             settings.get("bad_images", "stop"))
  return HostData(splits.train, splits.test, splits.num_classes, tuple(settings.mean),
                  tuple(settings.std), splits.skipped)


# config.data.dataset -> (loader(config) -> data, feeder class taking that data)
DATASETS: dict[str, tuple[Callable[[Any], Any], type]] = {
    "cifar10": (_load_cifar, DeviceFeeder),
    "cifar100": (_load_cifar, DeviceFeeder),
    "imagenet2012": (_load_imagenet, HostFeeder),
    "image_folder": (_load_image_folder, HostFeeder),
    "coco": (detection_feeder.load, detection_feeder.DetectionFeeder),
}


def load(config):
  """The data of `config.data` (arrays for device feeders, records for host feeders)."""
  if config.data.dataset not in DATASETS:
    raise UserError(f"unknown dataset {config.data.dataset!r} (config.data.dataset); "
                    f"valid: {', '.join(DATASETS)}")
  return DATASETS[config.data.dataset][0](config)


def create(config, mesh, loaded=None):
  """The feeder of `config.data` over `mesh`; `loaded` (from `load`) skips loading."""
  loaded = load(config) if loaded is None else loaded
  return DATASETS[config.data.dataset][1](loaded, config, mesh)
