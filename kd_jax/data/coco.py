"""COCO 2017 detection records, from the standard folder layout or from TFDS `coco/2017`.

Folder layout (https://cocodataset.org/#download: 2017 train/val images + annotations):
  <data_dir>/annotations/instances_train2017.json   <data_dir>/train2017/*.jpg
  <data_dir>/annotations/instances_val2017.json     <data_dir>/val2017/*.jpg
TFDS: a `coco/2017` copy prepared once, on a machine with TensorFlow (TFDS' COCO builder
needs it; reading the prepared files here does not):
  pip install tensorflow tensorflow-datasets
  tfds build coco/2017 --data_dir=<data_dir> --file_format=array_record

Both become the same per-image records, as detectron2's load_coco_json
(detectron2/data/datasets/coco.py) makes them: images in increasing id order; category
ids mapped to contiguous classes 0..K-1 in sorted id order (COCO: 80 classes, background
is K in the detector); boxes xyxy in original-image pixels (from COCO's xywh); crowd
flags kept (the training pipeline drops crowd boxes, as detectron2's DatasetMapper; the
COCO evaluator needs them). For training, `training_indices` keeps only images with a
non-crowd box (detectron2's filter_images_with_only_crowd_annotations).

A split is an `Annotations` table (everything but pixels, read up front: the pipeline
groups and pads batches by image size without decoding) and a reader of the encoded
image of record i. TFDS stores no image sizes: building its table reads every record
once (the JPEG header gives the size); `cache_dir` keeps the table for later runs.
"""
from collections import abc
import concurrent.futures
import dataclasses
import io
import json
import os
from typing import Callable

from absl import logging
import numpy as np
from PIL import Image

from kd_jax.errors import UserError

TFDS_NAME = 'coco/2017'
SPLITS = {'train': 'train', 'validation': 'val'}  # TFDS split -> folder split name
NUM_CLASSES = 80
# COCO 2017's 80 category ids, sorted: contiguous class k is COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66),
                     67, 70, *range(72, 83), *range(84, 91))


@dataclasses.dataclass(frozen=True)
class Annotations:
  """Per-image annotations of one split (original-image pixels), records in id order.

  heights/widths/image_ids: [N]; boxes[i]: float64 [n_i, 4] xyxy (detectron2 transforms
  them in float64 and keeps float32 after); classes[i]: int32
  [n_i] in 0..K-1; crowd[i]: bool [n_i]; areas[i]: float32 [n_i] (COCO's segment area,
  which COCOeval's small/medium/large ranges use); category_ids: the K sorted ids.
  """
  image_ids: np.ndarray
  heights: np.ndarray
  widths: np.ndarray
  boxes: tuple
  classes: tuple
  crowd: tuple
  areas: tuple
  category_ids: tuple
  class_names: tuple

  def __len__(self):
    return len(self.image_ids)

  def training_indices(self) -> np.ndarray:
    """Records with at least one non-crowd box (detectron2's
    filter_images_with_only_crowd_annotations)."""
    return np.asarray([i for i, crowd in enumerate(self.crowd) if (~crowd).any()], np.int64)

  def ground_truth(self) -> dict:
    """The split as a COCO instances dataset (json-able), for the COCO evaluator."""
    images = [{'id': int(i), 'height': int(h), 'width': int(w)}
              for i, h, w in zip(self.image_ids, self.heights, self.widths)]
    annotations = []
    for image_id, boxes, classes, crowd, areas in zip(self.image_ids, self.boxes,
                                                      self.classes, self.crowd, self.areas):
      for box, label, is_crowd, area in zip(boxes, classes, crowd, areas):
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append({'id': len(annotations) + 1, 'image_id': int(image_id),
                            'category_id': self.category_ids[label],
                            'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': float(area),
                            'iscrowd': int(is_crowd)})
    categories = [{'id': c, 'name': n} for c, n in zip(self.category_ids, self.class_names)]
    return {'images': images, 'annotations': annotations, 'categories': categories}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: its annotations, a reader of record i's encoded image (bytes) or uint8
  array, and where it came from (the instances json, for the evaluator, if any)."""
  annotations: Annotations
  read_image: Callable[[int], object]
  json_path: str | None = None

  def __len__(self):
    return len(self.annotations)

  def ground_truth(self):
    """What kd_jax.detection.coco_eval evaluates against: the instances json if the split
    has one, else its annotations as a COCO dataset (TFDS)."""
    return self.json_path or self.annotations.ground_truth()


# ---------------------------------------------------------------- instances json


def _image_annotations(annotation, id_map, json_path):
  """(xyxy box, class, crowd, area) of one annotation, or None if detectron2 skips it."""
  if annotation.get('ignore', 0):
    raise UserError(f'{json_path}: "ignore" annotations are not supported (detectron2 '
                    'refuses them too)')
  bbox = annotation.get('bbox')
  if not bbox or len(bbox) != 4:
    raise UserError(f'{json_path}: annotation {annotation.get("id")} of image '
                    f'{annotation.get("image_id")} has no xywh bbox')
  segmentation = annotation.get('segmentation')
  if isinstance(segmentation, list) and segmentation and not any(
      len(polygon) % 2 == 0 and len(polygon) >= 6 for polygon in segmentation):
    return None  # load_coco_json drops instances without a valid polygon
  category = annotation.get('category_id')
  if category not in id_map:
    raise UserError(f'{json_path}: annotation {annotation.get("id")} has category_id '
                    f'{category}, which is not in "categories"')
  x, y, w, h = (float(v) for v in bbox)
  return ((x, y, x + w, y + h), id_map[category], bool(annotation.get('iscrowd', 0)),
          float(annotation.get('area', w * h)))


def _table(image_ids, heights, widths, per_image, category_ids, class_names):
  """Annotations from per-image lists of (box, class, crowd, area)."""
  def column(items, k, dtype, shape=()):
    return np.asarray([item[k] for item in items], dtype).reshape(-1, *shape)
  return Annotations(
      image_ids=np.asarray(image_ids, np.int64), heights=np.asarray(heights, np.int32),
      widths=np.asarray(widths, np.int32),
      boxes=tuple(column(items, 0, np.float64, (4,)) for items in per_image),
      classes=tuple(column(items, 1, np.int32) for items in per_image),
      crowd=tuple(column(items, 2, bool) for items in per_image),
      areas=tuple(column(items, 3, np.float32) for items in per_image),
      category_ids=tuple(category_ids), class_names=tuple(class_names))


def parse_instances(dataset: dict, json_path: str = 'the instances json') -> tuple[
    Annotations, list[str]]:
  """(Annotations, file name of each record) of a COCO instances dataset (parsed json)."""
  try:
    categories = sorted(dataset['categories'], key=lambda c: c['id'])
    images = sorted(dataset['images'], key=lambda image: image['id'])
    annotations = dataset.get('annotations', [])
  except (KeyError, TypeError) as error:
    raise UserError(f'{json_path} is not a COCO instances file (missing {error})') from None
  category_ids = [c['id'] for c in categories]
  id_map = {category: k for k, category in enumerate(category_ids)}
  by_image = {image['id']: [] for image in images}
  for annotation in annotations:
    if annotation.get('image_id') in by_image:  # load_coco_json reads imgToAnns
      by_image[annotation['image_id']].append(annotation)
  per_image = []
  for image in images:
    items = [_image_annotations(a, id_map, json_path) for a in by_image[image['id']]]
    per_image.append([item for item in items if item is not None])
  table = _table([i['id'] for i in images], [i['height'] for i in images],
                 [i['width'] for i in images], per_image, category_ids,
                 [c.get('name', str(c['id'])) for c in categories])
  return table, [image['file_name'] for image in images]


class _Files:
  """Reads record i's image file (bytes); picklable for grain's worker processes."""

  def __init__(self, paths):
    self._paths = tuple(paths)

  def __call__(self, index):
    with open(self._paths[index], 'rb') as file:
      return file.read()


def load_instances(json_path: str, image_root: str) -> Split:
  """A split from a COCO instances json and the folder its file names are relative to."""
  if not os.path.isfile(json_path):
    raise UserError(f'COCO annotations {json_path} not found')
  try:
    with open(json_path, encoding='utf-8') as file:
      dataset = json.load(file)
  except (OSError, ValueError) as error:
    raise UserError(f'cannot read COCO annotations {json_path}: {error}') from None
  table, file_names = parse_instances(dataset, json_path)
  paths = [os.path.join(image_root, name) for name in file_names]
  missing = next((p for p in paths if not os.path.isfile(p)), None)
  if missing:
    raise UserError(f'{missing} (listed in {json_path}) not found')
  return Split(table, _Files(paths), json_path)


def folder_paths(data_dir: str, split: str) -> tuple[str, str]:
  """(instances json, image folder) of `split` ('train'/'validation') in the standard
  layout."""
  name = SPLITS.get(split, split)
  return (os.path.join(data_dir, 'annotations', f'instances_{name}2017.json'),
          os.path.join(data_dir, f'{name}2017'))


def _no_data(data_dir) -> UserError:
  return UserError(
      f'COCO 2017 not found under data_dir={data_dir}: download train2017.zip, val2017.zip '
      'and annotations_trainval2017.zip from https://cocodataset.org/#download and unzip '
      'them there (annotations/instances_{train,val}2017.json, train2017/, val2017/), or '
      f'prepare TFDS once on a machine with tensorflow: tfds build {TFDS_NAME} '
      f'--data_dir={data_dir} --file_format=array_record (config.data.source=\'tfds\'); '
      'offline, config.data.source=\'shapes\' runs on synthetic data')


def load_folder(data_dir: str, split: str) -> Split:
  """`split` of the standard COCO folder layout at `data_dir`."""
  if not data_dir:
    raise _no_data('(unset: config.data.data_dir)')
  data_dir = os.path.expanduser(data_dir)
  json_path, image_root = folder_paths(data_dir, split)
  if not os.path.isfile(json_path):
    raise _no_data(data_dir)
  return load_instances(json_path, image_root)


# ---------------------------------------------------------------- TFDS coco/2017


def _tfds_builder_dir(root):
  """The newest prepared `coco/2017/<version>` directory under root, or None."""
  base = os.path.join(root, *TFDS_NAME.split('/'))
  versions = [v for v in (os.listdir(base) if os.path.isdir(base) else [])
              if os.path.isfile(os.path.join(base, v, 'dataset_info.json'))]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(int(p) for p in v.split('.') if p.isdigit()))
  return os.path.join(base, newest)


def image_size(image) -> tuple[int, int]:
  """(height, width) of encoded bytes (header only) or of a uint8 array."""
  if isinstance(image, (bytes, np.bytes_)):
    with Image.open(io.BytesIO(image)) as picture:
      width, height = picture.size
      return _exif_transposed(picture, height, width)
  return tuple(np.shape(image)[:2])


def _exif_transposed(picture, height, width):
  """The size after the EXIF rotation detectron2's read_image applies."""
  orientation = picture.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
  return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class _TfdsImages:
  """Reads record i's image from a TFDS data source; re-opened in worker processes."""

  def __init__(self, builder_dir, split):
    self._builder_dir, self._split, self._source = builder_dir, split, None

  def __getstate__(self):
    return {'_builder_dir': self._builder_dir, '_split': self._split, '_source': None}

  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      builder = tfds.builder_from_directory(self._builder_dir)
      self._source = builder.as_data_source(
          self._split, decoders={'image': tfds.decode.SkipDecoding()})
    return self._source

  def __call__(self, index):
    return self.source()[index]['image']


def _tfds_record(example):
  """(image id, height, width, [(box, class, crowd, area)]) of one TFDS example."""
  height, width = image_size(example['image'])
  objects = example['objects']
  items = []
  for bbox, label, crowd, area in zip(objects['bbox'], objects['label'], objects['is_crowd'],
                                      objects['area']):
    ymin, xmin, ymax, xmax = (float(v) for v in bbox)
    items.append(((xmin * width, ymin * height, xmax * width, ymax * height), int(label),
                  bool(crowd), float(area)))
  return int(example['image/id']), height, width, items


def _tfds_table(images: _TfdsImages, num_threads: int):
  source = images.source()
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    rows = list(pool.map(lambda i: _tfds_record(source[i]), range(len(source))))
  order = sorted(range(len(rows)), key=lambda i: rows[i][0])
  names = source.dataset_info.features['objects']['label'].names
  category_ids = COCO_CATEGORY_IDS if len(names) == NUM_CLASSES else range(1, len(names) + 1)
  table = _table([rows[i][0] for i in order], [rows[i][1] for i in order],
                 [rows[i][2] for i in order], [rows[i][3] for i in order], category_ids, names)
  return table, np.asarray(order, np.int64)


class _Reindexed:
  """Record i of the id-sorted table -> the TFDS record it came from."""

  def __init__(self, images, order):
    self._images, self._order = images, order

  def __call__(self, index):
    return self._images(int(self._order[index]))


def load_tfds(split: str, data_dir: str | None = None, cache_dir: str | None = None,
              num_threads: int = 8) -> Split:
  """`split` of a prepared TFDS coco/2017 (read without TensorFlow).

  TFDS' boxes are normalised [ymin, xmin, ymax, xmax] float32 and its areas rounded to
  integers: boxes come back within float32 rounding of the json's, areas within 0.5.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = os.path.expanduser(data_dir or tfds.core.constants.get_default_data_dir())
  builder_dir = _tfds_builder_dir(root)
  if builder_dir is None:
    raise _no_data(root)
  images = _TfdsImages(builder_dir, split)
  try:
    images.source()
  except (ValueError, KeyError) as error:
    raise UserError(f'{TFDS_NAME} under {root} has no split {split!r}: '
                    f'{str(error).splitlines()[0][:200]}') from None
  cache = (os.path.join(cache_dir, f'coco2017_{split}_{len(images.source())}.pkl')
           if cache_dir else None)
  if cache and os.path.isfile(cache):
    table, order = _read_cache(cache)
  else:
    logging.info('reading the annotations and image sizes of %s %s (every record once)',
                 TFDS_NAME, split)
    table, order = _tfds_table(images, num_threads)
    if cache:
      _write_cache(cache, table, order)
  return Split(table, _Reindexed(images, order))


def _write_cache(path, table, order):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fields = {f.name: getattr(table, f.name) for f in dataclasses.fields(table)}
  arrays = {'order': order, 'counts': np.asarray([len(b) for b in table.boxes])}
  for name in ('image_ids', 'heights', 'widths'):
    arrays[name] = fields[name]
  for name in ('boxes', 'classes', 'crowd', 'areas'):
    arrays[name] = np.concatenate(fields[name]) if len(table) else np.zeros(0)
  arrays['category_ids'] = np.asarray(table.category_ids)
  arrays['class_names'] = np.asarray(table.class_names)
  np.savez(path + '.tmp.npz', **arrays)
  os.replace(path + '.tmp.npz', path)


def _read_cache(path):
  with np.load(path, allow_pickle=False) as data:
    splits = np.cumsum(data['counts'])[:-1]
    per = {name: tuple(np.split(data[name], splits)) for name in
           ('boxes', 'classes', 'crowd', 'areas')}
    table = Annotations(data['image_ids'], data['heights'], data['widths'],
                        tuple(b.reshape(-1, 4) for b in per['boxes']), per['classes'],
                        per['crowd'], per['areas'], tuple(int(c) for c in data['category_ids']),
                        tuple(str(n) for n in data['class_names']))
    return table, data['order']


def load(split: str, source: str, data_dir: str | None, cache_dir: str | None = None) -> Split:
  """`split` ('train' / 'validation') of COCO from `source`: 'folder', 'tfds', or
  'shapes' (kd_jax.data.shapes' synthetic dataset, written to data_dir if not there)."""
  if split not in SPLITS:
    raise UserError(f'unknown COCO split {split!r}; valid: {", ".join(SPLITS)}')
  if source == 'folder':
    return load_folder(data_dir, split)
  if source == 'tfds':
    return load_tfds(split, data_dir, cache_dir)
  if source == 'shapes':
    from kd_jax.data import shapes  # pylint: disable=g-import-not-at-top  (shapes imports coco)
    if not data_dir:
      raise UserError("config.data.data_dir is not set: source='shapes' writes its synthetic "
                      'images there')
    return load_folder(shapes.ensure(os.path.expanduser(data_dir)), split)
  raise UserError(f'unknown COCO source {source!r}; valid: folder, tfds, shapes')


class Records(abc.Sequence):
  """Random-access records {'image', 'image_id', 'height', 'width', 'boxes', 'classes',
  'crowd'} of a split (optionally a subset of its indices), for the grain pipeline."""

  def __init__(self, split: Split, indices=None):
    self.split = split
    self.indices = np.arange(len(split)) if indices is None else np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def sizes(self) -> np.ndarray:
    """int32 [len, 2]: (height, width) of each record, without reading images."""
    table, i = self.split.annotations, self.indices
    return np.stack([table.heights[i], table.widths[i]], -1)

  def __getitem__(self, k):
    i = int(self.indices[k])
    table = self.split.annotations
    return {'image': self.split.read_image(i), 'image_id': int(table.image_ids[i]),
            'height': int(table.heights[i]), 'width': int(table.widths[i]),
            'boxes': table.boxes[i], 'classes': table.classes[i], 'crowd': table.crowd[i]}
