"""Detection batches on the host: a grain pipeline as kd_jax/data/imagenet.py's.

Order, the same on every host and a function of (seed, epoch) only: epoch e is a
permutation of the training records; walking it, each image joins the queue of its
orientation (w > h or not) and a queue that reaches the global batch size G becomes the
next batch (detectron2's AspectRatioGroupedDataset, over the global batch instead of
each GPU's; an epoch's leftovers are dropped, so an epoch has sum over orientations of
floor(n / G) steps). Each image's short edge and flip are drawn per (seed, epoch,
position); from them and the image sizes in the annotations every host knows each
batch's padded size (detectron2_transforms.choose_bucket) without decoding anything.
Host p decodes its contiguous slice [p G/P, (p+1) G/P) of every global batch.

Evaluation: the landscape records, then the others, each run padded to whole global
batches (image_id -1), every record once; each batch takes the smallest bucket that
holds its images at the test size.

Batch layout (per host, L = G / P images):
  image uint8 [L, H, W, 3] (zero padding right/bottom), image_hw int32 [L, 2] (resized
  size before padding), orig_hw int32 [L, 2], boxes float32 [L, M, 4] (xyxy, resized
  pixels), classes int32 [L, M] (0..K-1), box_valid bool [L, M], image_id int32 [L].
"""
import collections
from collections import abc
import functools
import threading

from absl import logging
import grain
import numpy as np

from kd_jax.data import coco
from kd_jax.data import detection_transforms as transforms
from kd_jax.data import imagenet
from kd_jax.data import parallelism
from kd_jax.errors import UserError

MAX_BOXES = 100  # COCO 2017 train: at most 93 non-crowd boxes in an image
_ORDER_STREAM = 0xDE7A
_AUGMENT_STREAM = 0xDE7B
_FOREVER_EPOCHS = 10**6


@functools.lru_cache(maxsize=None)
def _resized(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
  """transforms.output_shape, remembered: COCO has a few thousand distinct image sizes."""
  return transforms.output_shape(height, width, short_edge, max_size)


def _check_fits(records: coco.Records, short_edge: int, max_size: int, buckets, max_boxes):
  """Every record fits some bucket at its largest size and has at most max_boxes boxes."""
  table = records.split.annotations
  sizes = records.sizes()
  for height, width in np.unique(sizes, axis=0):
    size = _resized(int(height), int(width), short_edge, max_size)
    if transforms.choose_bucket(size, buckets) is None:
      first = records.indices[np.flatnonzero((sizes == (height, width)).all(1))[0]]
      raise UserError(f'image {table.image_ids[first]} resized to {size} fits none of the '
                      f'input size buckets {buckets}')
  counts = np.asarray([np.count_nonzero(~table.crowd[i]) for i in records.indices])
  if len(counts) and counts.max() > max_boxes:
    first = records.indices[int(np.argmax(counts))]
    raise UserError(f'image {table.image_ids[first]} has {counts.max()} boxes, more than '
                    f'max_boxes={max_boxes}: raise it')


def _log_buckets(what, buckets):
  logging.info('detection %s input size buckets (at most %d compiles): %s', what,
               len(buckets), ', '.join(f'{h}x{w}' for h, w in buckets))


class _TrainOrder(abc.Sequence):
  """Host element k -> the record, its short edge, flip and its batch's bucket."""

  def __init__(self, sizes, global_batch, process_index, process_count, seed, num_epochs,
               short_edges, max_size, buckets):
    self._sizes = np.asarray(sizes)
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self._seed = seed
    self._short_edges = np.asarray(short_edges)
    self._max_size = max_size
    self._buckets = buckets
    orientation = transforms.landscape(self._sizes[:, 0], self._sizes[:, 1])
    counts = np.bincount(orientation.astype(int), minlength=2)
    self.steps_per_epoch = int(sum(counts // global_batch))
    if self.steps_per_epoch < 1:
      raise UserError(f'batch_size={global_batch} is larger than both orientation groups of '
                      f'the training set ({counts[1]} landscape, {counts[0]} other images)')
    self._length = num_epochs * self.steps_per_epoch * self._local_batch
    self._lock = threading.Lock()
    self._plans = collections.OrderedDict()

  def __getstate__(self):  # For grain's worker processes: no lock, no cache.
    state = dict(self.__dict__)
    del state['_lock'], state['_plans']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._plans = collections.OrderedDict()

  def __len__(self):
    return self._length

  def plan(self, epoch: int):
    """(record, short edge, flip) per permutation position, and the epoch's batches
    (positions [steps, G]) with their buckets."""
    with self._lock:
      plan = self._plans.get(epoch)
      if plan is None:
        plan = self._make_plan(epoch)
        self._plans[epoch] = plan
        while len(self._plans) > 2:
          self._plans.popitem(last=False)
      return plan

  def _make_plan(self, epoch):
    permutation = np.random.default_rng([self._seed, _ORDER_STREAM, epoch]).permutation(
        len(self._sizes))
    rng = np.random.default_rng([self._seed, _AUGMENT_STREAM, epoch])
    short = rng.choice(self._short_edges, len(permutation))
    flip = rng.random(len(permutation)) < 0.5
    sizes = self._sizes[permutation]
    group = transforms.landscape(sizes[:, 0], sizes[:, 1])
    batches = []  # (position completing the batch, its positions)
    for value in (False, True):
      positions = np.flatnonzero(group == value)
      full = len(positions) // self._global_batch * self._global_batch
      for chunk in positions[:full].reshape(-1, self._global_batch):
        batches.append((chunk[-1], chunk))
    batches = np.stack([chunk for _, chunk in sorted(batches, key=lambda b: b[0])])
    buckets = []
    for chunk in batches:
      resized = [_resized(int(sizes[p, 0]), int(sizes[p, 1]), int(short[p]), self._max_size)
                 for p in chunk]
      buckets.append(transforms.choose_bucket(resized, self._buckets))
    return permutation, short, flip, batches, buckets

  def __getitem__(self, k):
    if not 0 <= k < self._length:
      raise IndexError(k)
    step, offset = divmod(k, self._local_batch)
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    permutation, short, flip, batches, buckets = self.plan(epoch)
    position = int(batches[step_in_epoch][self._offset + offset])
    return {'index': int(permutation[position]), 'short_edge': int(short[position]),
            'flip': bool(flip[position]), 'bucket': buckets[step_in_epoch]}


class _EvalOrder(abc.Sequence):
  """Host element k -> {'index' (-1: padding), 'short_edge', 'flip' False, 'bucket'}."""

  def __init__(self, sizes, global_batch, process_index, process_count, short_edge,
               max_size, buckets):
    sizes = np.asarray(sizes)
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self._short_edge = short_edge
    group = transforms.landscape(sizes[:, 0], sizes[:, 1]) if len(sizes) else np.zeros(0, bool)
    self._batches, self._buckets = [], []
    for value in (True, False):
      records = np.flatnonzero(group == value)
      padded = -(-len(records) // global_batch) * global_batch
      for chunk in np.pad(records, (0, padded - len(records)), constant_values=-1).reshape(
          -1, global_batch):
        resized = [_resized(int(sizes[i, 0]), int(sizes[i, 1]), short_edge, max_size)
                   for i in chunk if i >= 0]
        self._batches.append(chunk)
        self._buckets.append(transforms.choose_bucket(resized, buckets))

  def __len__(self):
    return len(self._batches) * self._local_batch

  def __getitem__(self, k):
    if not 0 <= k < len(self):
      raise IndexError(k)
    batch, offset = divmod(k, self._local_batch)
    return {'index': int(self._batches[batch][self._offset + offset]),
            'short_edge': self._short_edge, 'flip': False, 'bucket': self._buckets[batch]}


class _Prepare(grain.transforms.Map):
  """Read + decode + resize (+ flip) + pad one image and its boxes (padding: zeros)."""

  def __init__(self, records: coco.Records, max_size: int, max_boxes: int):
    self._records = records
    self._max_size = max_size
    self._max_boxes = max_boxes

  def map(self, element):
    bucket = element['bucket']
    if element['index'] < 0:
      boxes, classes, valid = transforms.pad_boxes(np.zeros((0, 4)), [], self._max_boxes)
      return {'image': np.zeros((*bucket, 3), np.uint8), 'image_hw': np.zeros(2, np.int32),
              'orig_hw': np.zeros(2, np.int32), 'boxes': boxes, 'classes': classes,
              'box_valid': valid, 'image_id': np.int32(-1)}
    record = self._records[element['index']]
    picture = transforms.read_rgb(record['image'])
    hw = (record['height'], record['width'])
    if (picture.height, picture.width) != hw:
      raise UserError(f'image {record["image_id"]} is {picture.height}x{picture.width}, but '
                      f'its annotations say {hw[0]}x{hw[1]}')
    new_hw = transforms.output_shape(*hw, element['short_edge'], self._max_size)
    image = transforms.resize(picture, new_hw)
    if element['flip']:
      image = image[:, ::-1]
    keep = ~record['crowd']
    boxes, nonempty = transforms.transform_boxes(record['boxes'][keep], hw, new_hw,
                                                 element['flip'])
    boxes, classes, valid = transforms.pad_boxes(boxes[nonempty],
                                                 record['classes'][keep][nonempty],
                                                 self._max_boxes)
    return {'image': transforms.pad_image(image, bucket),
            'image_hw': np.asarray(new_hw, np.int32), 'orig_hw': np.asarray(hw, np.int32),
            'boxes': boxes, 'classes': classes, 'box_valid': valid,
            'image_id': np.int32(record['image_id'])}


def make_train_iterator(split: coco.Split, global_batch_size: int, *, seed: int,
                        short_edges=transforms.MIN_SIZE_TRAIN,
                        max_size: int = transforms.MAX_SIZE_TRAIN, buckets=None,
                        max_boxes: int = MAX_BOXES, num_epochs: int | None = None,
                        process_index: int | None = None, process_count: int | None = None,
                        num_threads: int = parallelism.AUTO_THREADS,
                        worker_count: int = parallelism.AUTO_WORKERS) -> imagenet.TrainIterator:
  """This host's training batches (layout: module docstring) over the records of `split`
  with a non-crowd box, resumable at any batch (imagenet.TrainIterator's state)."""
  if seed < 0:
    raise UserError(f'data seed must be >= 0, got {seed}')
  if num_epochs is not None and num_epochs < 1:
    raise UserError(f'num_epochs must be >= 1, got {num_epochs}')
  imagenet._check_parallelism(num_threads, worker_count)  # pylint: disable=protected-access
  process_index, process_count, local_batch = imagenet._host_slice(  # pylint: disable=W0212
      global_batch_size, process_index, process_count)
  short_edges = tuple(int(s) for s in short_edges)
  buckets = transforms.check_buckets(buckets or transforms.default_buckets(short_edges, max_size))
  records = coco.Records(split, split.annotations.training_indices())
  if not len(records):
    raise UserError('no training image has a non-crowd box')
  _check_fits(records, max(short_edges), max_size, buckets, max_boxes)
  _log_buckets('train', buckets)
  order = _TrainOrder(records.sizes(), global_batch_size, process_index, process_count, seed,
                      num_epochs or _FOREVER_EPOCHS, short_edges, max_size, buckets)
  batches = (grain.MapDataset.source(order)
             .map(_Prepare(records, max_size, max_boxes))
             .batch(local_batch, drop_remainder=True))
  settings = {'seed': seed, 'global_batch_size': global_batch_size,
              'num_examples': len(records), 'short_edges': list(short_edges),
              'max_size': max_size, 'buckets': [list(b) for b in buckets],
              'max_boxes': max_boxes}
  iterator = imagenet.TrainIterator(batches, num_threads=num_threads, worker_count=worker_count,
                                    settings=settings, steps_per_epoch=order.steps_per_epoch,
                                    num_examples=len(records))
  iterator.buckets = buckets
  return iterator


def make_eval_batches(split: coco.Split, global_batch_size: int, *,
                      short_edge: int = transforms.MIN_SIZE_TEST,
                      max_size: int = transforms.MAX_SIZE_TEST, buckets=None,
                      max_boxes: int = MAX_BOXES, process_index: int | None = None,
                      process_count: int | None = None,
                      num_threads: int = parallelism.AUTO_THREADS,
                      worker_count: int = parallelism.AUTO_WORKERS) -> imagenet.EvalBatches:
  """This host's share of every record of `split` at the test size, padded to whole
  global batches (image_id -1)."""
  imagenet._check_parallelism(num_threads, worker_count)  # pylint: disable=protected-access
  process_index, process_count, local_batch = imagenet._host_slice(  # pylint: disable=W0212
      global_batch_size, process_index, process_count)
  buckets = transforms.check_buckets(buckets or transforms.default_buckets([short_edge],
                                                                           max_size))
  records = coco.Records(split)
  _check_fits(records, short_edge, max_size, buckets, max_boxes)
  _log_buckets('eval', buckets)
  order = _EvalOrder(records.sizes(), global_batch_size, process_index, process_count,
                     short_edge, max_size, buckets)
  batches = (grain.MapDataset.source(order)
             .map(_Prepare(records, max_size, max_boxes))
             .batch(local_batch))
  evals = imagenet.EvalBatches(batches, num_threads, worker_count, len(records))
  evals.buckets = buckets
  return evals
