"""The detection feeder: COCO-style batches (kd_jax.data.detection_pipeline) behind the
feeder protocol of kd_jax.data.feeders, so detection runs in the classification loop.

detectron2 counts iterations, not epochs: here an "epoch" of the loop is
`config.data.period` iterations (evaluation and checkpoint after each), and the data
pipeline runs on across them, its own epochs drawn from (seed, data epoch) as
detectron2's sampler does. Images stay RGB uint8 pixels: the detector normalises them
itself (detectron2's PIXEL_MEAN / PIXEL_STD, in its channel order), so `info.mean` is None.
Padded batches come in a few fixed sizes (buckets), one compilation each.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from kd_jax.data import coco, detection_pipeline
from kd_jax.errors import UserError

TARGETS = ("image_hw", "boxes", "classes", "box_valid")  # what the detector's loss reads


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
  """DataInfo's fields for a detection dataset (mean None: the model normalises)."""
  name: str
  source: str
  num_classes: int
  num_train: int
  num_test: int
  class_names: tuple
  category_ids: tuple
  mean: None = None
  std: None = None
  metric: str = "AP"  # what best/last report: COCO box AP (kd_jax.detection.coco_eval)

  @property
  def cache_key(self):
    return f"{self.name}.{self.source}.{self.num_train}"


@dataclasses.dataclass(frozen=True)
class DetectionData:
  """Both splits of a detection dataset (kd_jax.data.coco.Split)."""
  train: coco.Split
  test: coco.Split

  @property
  def num_classes(self):
    return len(self.train.annotations.category_ids)


def load(config):
  """COCO (or the synthetic shapes) of `config.data`: source tfds / folder / shapes."""
  settings = config.data
  return DetectionData(
      train=coco.load("train", settings.source, settings.data_dir or None),
      test=coco.load("validation", settings.source, settings.data_dir or None))


class DetectionFeeder:
  """Host-decoded, bucket-padded detection batches as global arrays over ('data',)."""
  task = "detection"

  def __init__(self, data: DetectionData, config, mesh):
    settings = config.data
    self._sharding = NamedSharding(mesh, P("data"))
    parallel = dict(num_threads=settings.num_threads, worker_count=settings.worker_count,
                    max_boxes=settings.max_boxes)
    self._train_settings = dict(short_edges=tuple(settings.short_edges),
                                max_size=settings.max_size, **parallel)
    self._train_split, self._seed = data.train, config.seed
    self._iterator = detection_pipeline.make_train_iterator(
        data.train, config.batch_size, seed=config.seed, **self._train_settings)
    self._eval = detection_pipeline.make_eval_batches(
        data.test, config.eval_batch_size, short_edge=settings.test_short_edge,
        max_size=settings.test_max_size, **parallel)
    self._batch_size, self._max_boxes = config.batch_size, settings.max_boxes
    self.ground_truth = data.test.ground_truth()
    self.steps_per_epoch = settings.period
    annotations = data.train.annotations
    self.info = DetectionInfo(settings.dataset, settings.source, data.num_classes,
                              len(data.train), len(data.test),
                              tuple(annotations.class_names), tuple(annotations.category_ids))

  def _global(self, batch):
    return {name: jax.make_array_from_process_local_data(self._sharding, np.asarray(value))
            for name, value in batch.items()}

  def train_batches(self, epoch):
    del epoch  # the pipeline knows its position
    for batch in self._iterator:
      yield self._global(batch)

  def example_train_batch(self):
    """Shapes of a batch in the first bucket (the metrics do not depend on the bucket)."""
    height, width = self._iterator.buckets[0]
    batch, boxes = self._batch_size, self._max_boxes
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._sharding)  # pylint: disable=g-long-lambda
    return {"image": spec((batch, height, width, 3), jnp.uint8),
            "image_hw": spec((batch, 2), jnp.int32), "orig_hw": spec((batch, 2), jnp.int32),
            "boxes": spec((batch, boxes, 4), jnp.float32),
            "classes": spec((batch, boxes), jnp.int32),
            "box_valid": spec((batch, boxes), jnp.bool_), "image_id": spec((batch,), jnp.int32)}

  def train_inputs(self, batch, step, method):
    del step, method
    return [batch["image"]], {name: batch[name] for name in TARGETS}, batch["image_id"]

  def eval_batches(self):
    for batch in self._eval:
      yield self._global(batch)

  def state(self):
    return self._iterator.get_state()

  def restore(self, state):
    if state is not None:
      self._iterator.set_state(state)

  @property
  def batch_size(self):
    return self._batch_size

  def sample_train_batches(self, count, stream=1):
    """`count` training batches (the training augmentation) from an iterator of their
    own, seeded apart from training's (seed + `stream`), so the training position is
    untouched: what a method computes once from the teacher (detection ND's centres)."""
    iterator = detection_pipeline.make_train_iterator(
        self._train_split, self._batch_size, seed=self._seed + stream, **self._train_settings)
    for _, batch in zip(range(count), iterator):
      yield self._global(batch)

  def train_pass(self):
    raise UserError("this method needs a pass over the training split, which detection "
                    "runs do not make")

