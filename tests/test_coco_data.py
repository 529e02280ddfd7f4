"""COCO detection data: records (kd_jax.data.coco), detectron2's transforms
(kd_jax.data.detection_transforms), the grain pipeline (kd_jax.data.detection_pipeline)
and the synthetic shapes dataset (kd_jax.data.shapes).

Expected values come from the json written here, from hand arithmetic, and from a NumPy
transcription of detectron2's ResizeShortestEdge.get_output_shape
(detectron2/data/transforms/augmentation_impl.py). TFDS `coco/2017` is exercised as a
small prepared array_record copy (what `tfds build --file_format=array_record` leaves):
tfds.testing.mock_data cannot stand in, it builds TFDS' COCO builder, whose _info needs
TensorFlow.
"""
import io
import json
import os
import pickle

import numpy as np
from PIL import Image
import pytest

from kd_jax.data import coco
from kd_jax.data import detection_pipeline as pipeline
from kd_jax.data import detection_transforms as transforms
from kd_jax.data import shapes
from kd_jax.errors import UserError

SMALL = dict(short_edges=(32, 48), max_size=80, process_index=0, process_count=1,
             num_threads=2)
EVAL = dict(short_edge=48, max_size=80, process_index=0, process_count=1, num_threads=2)


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
  return shapes.write(str(tmp_path_factory.mktemp('shapes')), num_train=24, num_val=7,
                      sizes=(24, 64))


@pytest.fixture(scope='module')
def train_split(shapes_dir):
  return coco.load('train', 'folder', shapes_dir)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ------------------------------------------------------------------ ResizeShortestEdge


def _numpy_output_shape(height, width, short_edge, max_size):
  """detectron2's get_output_shape, transcribed to NumPy arrays."""
  height, width = np.asarray(height, np.float64), np.asarray(width, np.float64)
  size = np.asarray(short_edge, np.float64)
  scale = size / np.minimum(height, width)
  new_height = np.where(height < width, size, scale * height)
  new_width = np.where(height < width, scale * width, size)
  longest = np.maximum(new_height, new_width)
  clamp = np.where(longest > max_size, max_size * 1.0 / longest, 1.0)
  return ((new_height * clamp + 0.5).astype(np.int64), (new_width * clamp + 0.5).astype(np.int64))


def test_output_shape_by_hand():
  assert transforms.output_shape(480, 640, 800, 1333) == (800, 1067)  # 640 * 5/3 = 1066.7
  assert transforms.output_shape(427, 640, 800, 1333) == (800, 1199)  # 1199.06
  assert transforms.output_shape(640, 480, 640, 1333) == (853, 640)
  assert transforms.output_shape(200, 1000, 800, 1333) == (267, 1333)  # 4000 -> 1333
  assert transforms.output_shape(500, 500, 672, 1333) == (672, 672)


def test_output_shape_matches_numpy_transcription():
  rng = np.random.default_rng(0)
  heights, widths = rng.integers(1, 2000, (2, 5000))
  shorts = rng.choice(transforms.MIN_SIZE_TRAIN, 5000)
  expected = _numpy_output_shape(heights, widths, shorts, 1333)
  got = np.array([transforms.output_shape(h, w, s, 1333)
                  for h, w, s in zip(heights, widths, shorts)]).T
  np.testing.assert_array_equal(got, np.stack(expected))


def test_transform_boxes_by_hand():
  boxes = np.array([[10, 20, 30, 60], [150, 0, 250, 100], [40, 40, 40, 50]], np.float64)
  resized, keep = transforms.transform_boxes(boxes, (100, 200), (50, 100), flip=False)
  np.testing.assert_allclose(resized, [[5, 10, 15, 30], [75, 0, 100, 50], [20, 20, 20, 25]])
  assert resized.dtype == np.float32 and keep.tolist() == [True, True, False]  # zero width
  flipped, _ = transforms.transform_boxes(boxes, (100, 200), (50, 100), flip=True)
  np.testing.assert_allclose(flipped[:2], [[85, 10, 95, 30], [0, 0, 25, 50]])


def test_default_buckets_and_choice():
  buckets = transforms.check_buckets(transforms.default_buckets(transforms.MIN_SIZE_TRAIN, 1333))
  assert len(buckets) == 12 and (800, 1344) in buckets and (1344, 640) in buckets
  assert transforms.choose_bucket([(800, 1067), (672, 1199)], buckets) == (800, 1344)
  assert transforms.choose_bucket([(650, 900)], buckets) == (672, 1344)
  assert transforms.choose_bucket([(853, 640)], buckets) == (1344, 640)
  assert transforms.choose_bucket([(1400, 10)], buckets) is None
  with pytest.raises(UserError, match='multiples of 32'):
    transforms.check_buckets([(800, 1333)])


# ------------------------------------------------------------------ instances json


def _instances():
  """Unsorted category and image ids, a crowd box, an invalid polygon, a stray image id."""
  return {
      'categories': [{'id': 9, 'name': 'c9'}, {'id': 2, 'name': 'c2'}, {'id': 5, 'name': 'c5'}],
      'images': [{'id': 30, 'file_name': 'b.png', 'height': 10, 'width': 20},
                 {'id': 7, 'file_name': 'a.png', 'height': 12, 'width': 8},
                 {'id': 40, 'file_name': 'c.png', 'height': 5, 'width': 5},
                 {'id': 50, 'file_name': 'd.png', 'height': 6, 'width': 6}],
      'annotations': [
          {'id': 1, 'image_id': 30, 'category_id': 9, 'bbox': [1, 2, 3, 4], 'iscrowd': 0,
           'area': 12},
          {'id': 2, 'image_id': 30, 'category_id': 2, 'bbox': [0.5, 0, 10, 5], 'iscrowd': 1,
           'area': 50},
          {'id': 3, 'image_id': 7, 'category_id': 5, 'bbox': [2, 2, 2, 2], 'iscrowd': 0,
           'area': 4, 'segmentation': [[1, 2, 3, 4]]},  # 4 numbers: no valid polygon
          {'id': 4, 'image_id': 40, 'category_id': 2, 'bbox': [0, 0, 1, 1], 'iscrowd': 1},
          {'id': 5, 'image_id': 99, 'category_id': 2, 'bbox': [0, 0, 1, 1], 'iscrowd': 0}]}


def test_parse_instances_maps_categories_and_keeps_crowd():
  table, files = coco.parse_instances(_instances())
  assert table.category_ids == (2, 5, 9) and table.class_names == ('c2', 'c5', 'c9')
  assert table.image_ids.tolist() == [7, 30, 40, 50] and files == ['a.png', 'b.png', 'c.png',
                                                                    'd.png']
  assert table.heights.tolist() == [12, 10, 5, 6] and table.widths.tolist() == [8, 20, 5, 6]
  assert len(table.boxes[0]) == 0  # the invalid-polygon instance is dropped
  np.testing.assert_array_equal(table.boxes[1], [[1, 2, 4, 6], [0.5, 0, 10.5, 5]])
  assert table.classes[1].tolist() == [2, 0] and table.crowd[1].tolist() == [False, True]
  # Training keeps images with a non-crowd box: not 7 (none), 40 (crowd only), 50 (none).
  assert table.training_indices().tolist() == [1]
  truth = table.ground_truth()
  assert [a['category_id'] for a in truth['annotations']] == [9, 2, 2]
  assert truth['annotations'][1]['bbox'] == [0.5, 0.0, 10.0, 5.0]
  assert truth['annotations'][1]['iscrowd'] == 1


def test_unknown_category_is_one_line():
  bad = _instances()
  bad['annotations'][0]['category_id'] = 4
  with pytest.raises(UserError, match='category_id 4'):
    coco.parse_instances(bad, 'x.json')


def test_offline_without_coco_is_one_line(tmp_path):
  for source in ('folder', 'tfds'):
    with pytest.raises(UserError) as error:
      coco.load('train', source, str(tmp_path))
    message = str(error.value)
    assert '\n' not in message and 'cocodataset.org' in message
    assert 'tfds build coco/2017' in message and "source='shapes'" in message


# ------------------------------------------------------------------ shapes + pipeline


def test_shapes_source_writes_once_then_reads(tmp_path):
  root = str(tmp_path / 'shapes')
  split = coco.load('validation', 'shapes', root)
  json_path = os.path.join(root, 'annotations', 'instances_val2017.json')
  written = os.path.getmtime(json_path)
  again = coco.load('validation', 'shapes', root)
  assert os.path.getmtime(json_path) == written and not list(tmp_path.glob('*.partial'))
  np.testing.assert_array_equal(split.annotations.image_ids, again.annotations.image_ids)
  assert len(coco.load('train', 'shapes', root)) == 64
  with pytest.raises(UserError, match='data_dir is not set'):
    coco.load('train', 'shapes', '')
  jpeg = coco.load('train', 'folder', shapes.write(str(tmp_path / 'jpeg'), num_train=4,
                                                   num_val=1, image_format='jpg'))
  assert jpeg.read_image(0)[:2] == b'\xff\xd8'  # JPEG bytes, decoded by the pipeline
  batch = next(iter(pipeline.make_eval_batches(jpeg, 2, **EVAL)))
  assert batch['image'].any() and jpeg.ground_truth() == jpeg.json_path


def test_shapes_dataset_reads_as_coco(shapes_dir, train_split):
  table = train_split.annotations
  assert len(table) == 24 and table.category_ids == shapes.CATEGORY_IDS
  assert len(table.training_indices()) == 21  # every 8th image is empty
  with open(os.path.join(shapes_dir, 'annotations', 'instances_train2017.json')) as file:
    raw = json.load(file)
  first = raw['annotations'][0]
  row = list(table.image_ids).index(first['image_id'])
  x, y, w, h = first['bbox']
  np.testing.assert_array_equal(table.boxes[row][0], [x, y, x + w, y + h])
  # The box is the shape's exact extent: its edge pixels differ from the noise around.
  image = np.asarray(Image.open(os.path.join(shapes_dir, 'train2017',
                                             raw['images'][row]['file_name'])))
  colour = image[y + h // 2, x + w // 2] if first['category_id'] != 7 else image[y + h - 1,
                                                                                 x + w // 2]
  inside = (image[y:y + h, x:x + w] == colour).all(-1)
  assert inside.any(0).all() and inside.any(1).all()


def _expected_boxes(train_split, image_id, image_hw, flip):
  """The record's non-crowd boxes scaled to image_hw (and flipped), by plain arithmetic."""
  table = train_split.annotations
  row = list(table.image_ids).index(image_id)
  height, width = table.heights[row], table.widths[row]
  new_h, new_w = image_hw
  x1, y1, x2, y2 = table.boxes[row][~table.crowd[row]].T
  sx, sy = new_w / width, new_h / height
  if flip:
    return np.stack([new_w - x2 * sx, y1 * sy, new_w - x1 * sx, y2 * sy], 1)
  return np.stack([x1 * sx, y1 * sy, x2 * sx, y2 * sy], 1)


def test_train_batches_resize_flip_pad_and_boxes(shapes_dir, train_split):
  iterator = pipeline.make_train_iterator(train_split, 4, seed=1, **SMALL)
  assert iterator.steps_per_epoch == sum(n // 4 for n in np.bincount(
      transforms.landscape(*coco.Records(train_split, train_split.annotations
                                         .training_indices()).sizes().T).astype(int)))
  table = train_split.annotations
  flips = set()
  for batch in _take(iterator, 4):
    assert batch['image'].dtype == np.uint8 and batch['boxes'].shape == (4, 100, 4)
    height, width = batch['image'].shape[1:3]
    assert (height, width) in iterator.buckets
    orig = batch['orig_hw']
    assert len(set(transforms.landscape(orig[:, 0], orig[:, 1]).tolist())) == 1  # grouped
    sizes = [transforms.output_shape(h, w, s, 80) for h, w in orig for s in (32, 48)]
    for i, image_id in enumerate(batch['image_id']):
      row = list(table.image_ids).index(image_id)
      assert tuple(orig[i]) == (table.heights[row], table.widths[row])
      new_h, new_w = batch['image_hw'][i]
      assert (new_h, new_w) in sizes[2 * i:2 * i + 2]
      path = os.path.join(shapes_dir, 'train2017', f'{image_id:012d}.png')
      resized = np.asarray(Image.open(path).convert('RGB').resize((new_w, new_h),
                                                                  Image.BILINEAR))
      image = batch['image'][i]
      assert not image[new_h:].any() and not image[:, new_w:].any()  # zero padding
      flip = not np.array_equal(image[:new_h, :new_w], resized)
      if flip:
        np.testing.assert_array_equal(image[:new_h, :new_w], resized[:, ::-1])
      flips.add(flip)
      expected = _expected_boxes(train_split, image_id, (new_h, new_w), flip)
      count = int(batch['box_valid'][i].sum())
      assert count == len(expected) and not batch['box_valid'][i, count:].any()
      np.testing.assert_allclose(batch['boxes'][i, :count], expected, rtol=1e-6, atol=1e-4)
      np.testing.assert_array_equal(batch['classes'][i, :count],
                                    table.classes[row][~table.crowd[row]])
    # The bucket is the smallest that holds the batch's images (smallest area first).
    assert transforms.choose_bucket(batch['image_hw'], iterator.buckets) == (height, width)
  assert flips == {False, True}
  iterator.close()


def test_batches_are_detectron2_aspect_ratio_groups(train_split):
  """The epoch's batches are what AspectRatioGroupedDataset.__iter__
  (detectron2/data/common.py) yields from the epoch's permutation: each image appended to
  its orientation's bucket (0 if w > h else 1), a full bucket yielded at once."""
  records = coco.Records(train_split, train_split.annotations.training_indices())
  train_order = pipeline._TrainOrder  # pylint: disable=protected-access
  order = train_order(records.sizes(), 4, 0, 1, 5, 2, (32, 48), 80,
                      transforms.default_buckets((32, 48), 80))
  for epoch in (0, 1):
    permutation, _, _, batches, _ = order.plan(epoch)
    expected, buckets = [], ([], [])
    for position, record in enumerate(permutation):
      height, width = records.sizes()[record]
      bucket = buckets[0 if width > height else 1]
      bucket.append(position)
      if len(bucket) == 4:
        expected.append(bucket[:])
        del bucket[:]
    np.testing.assert_array_equal(batches, expected)
    assert len(expected) == order.steps_per_epoch


def test_pipeline_stages_pickle_for_worker_processes(train_split):
  """grain's worker processes receive the order and the read/decode stage by pickle."""
  records = coco.Records(train_split, train_split.annotations.training_indices())
  prepare = pipeline._Prepare(records, 80, 10)  # pylint: disable=protected-access
  element = {'index': 0, 'short_edge': 32, 'flip': False, 'bucket': (64, 96)}
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(prepare)).map(element)['image'],
                                prepare.map(element)['image'])
  iterator = pipeline.make_train_iterator(train_split, 4, seed=0, **SMALL)
  assert pickle.loads(pickle.dumps(iterator._batches))  # pylint: disable=W0212
  iterator.close()


def test_train_order_deterministic_resumable_and_host_independent(train_split):
  make = lambda **kw: pipeline.make_train_iterator(train_split, 4, seed=3, **{**SMALL, **kw})
  first = make()
  batches = _take(first, 3)
  state = json.loads(json.dumps(first.get_state()))
  expected = _take(first, 3)  # crosses into the second epoch (5 steps per epoch)
  resumed = make()
  resumed.set_state(state)
  hosts = [make(process_index=p, process_count=2) for p in (0, 1)]
  for host in hosts:
    _take(host, 3)
  for batch, again, halves in zip(expected, _take(resumed, 3), zip(*[_take(h, 3) for h in hosts])):
    for key in batch:
      np.testing.assert_array_equal(batch[key], again[key])
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
  other = pipeline.make_train_iterator(train_split, 4, seed=4, **SMALL)
  assert not all(np.array_equal(a['image_id'], b['image_id'])
                 for a, b in zip(batches, _take(other, 3)))
  with pytest.raises(UserError, match='same data settings'):
    pipeline.make_train_iterator(train_split, 4, seed=3, **{**SMALL, 'max_size': 96}).set_state(
        state)
  for iterator in (first, resumed, other, *hosts):
    iterator.close()


def test_eval_covers_every_image_once_across_hosts(shapes_dir):
  split = coco.load('validation', 'folder', shapes_dir)
  hosts = [list(pipeline.make_eval_batches(split, 4, **{**EVAL, 'process_index': p,
                                                         'process_count': 2})) for p in (0, 1)]
  assert len(hosts[0]) == len(hosts[1])
  ids = np.concatenate([b['image_id'] for host in hosts for b in host])
  assert sorted(ids[ids >= 0].tolist()) == sorted(split.annotations.image_ids.tolist())
  for host in hosts:
    for batch in host:
      padding = batch['image_id'] < 0
      assert not batch['image'][padding].any() and not batch['box_valid'][padding].any()
      real = batch['image_hw'][~padding]
      if len(real):
        assert all(transforms.output_shape(h, w, 48, 80) == tuple(hw)
                   for (h, w), hw in zip(batch['orig_hw'][~padding], real))


def test_too_many_boxes_and_wrong_image_size_are_one_line(tmp_path):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, 'annotations'))
  os.makedirs(os.path.join(root, 'train2017'))
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(os.path.join(root, 'train2017', 'a.png'))
  dataset = {'categories': [{'id': 1, 'name': 'x'}],
             'images': [{'id': 1, 'file_name': 'a.png', 'height': 20, 'width': 31}],
             'annotations': [{'id': k, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 2, 2],
                              'iscrowd': 0} for k in range(1, 4)]}
  with open(os.path.join(root, 'annotations', 'instances_train2017.json'), 'w') as file:
    json.dump(dataset, file)
  split = coco.load('train', 'folder', root)
  with pytest.raises(UserError, match='3 boxes, more than max_boxes=2'):
    pipeline.make_train_iterator(split, 1, seed=0, max_boxes=2, **SMALL)
  iterator = pipeline.make_train_iterator(split, 1, seed=0, **SMALL)
  with pytest.raises(UserError, match='is 20x30, but its annotations say 20x31'):
    next(iterator)
  iterator.close()


# ------------------------------------------------------------------ TFDS coco/2017


def _write_tfds_copy(root, examples):
  """A coco/2017 array_record copy with TFDS' COCO features (written without TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(encoding_format='jpeg'),
      'image/filename': tfds.features.Text(), 'image/id': np.int64,
      'objects': tfds.features.Sequence({
          'id': np.int64, 'area': np.int64, 'bbox': tfds.features.BBoxFeature(),
          'label': tfds.features.ClassLabel(names=[f'class{k}' for k in range(80)]),
          'is_crowd': np.bool_})})
  directory = os.path.join(root, 'coco', '2017', '1.1.0')
  os.makedirs(directory)
  identity = tfds.core.DatasetIdentity(name='coco', version=tfds.core.Version('1.1.0'),
                                       data_dir=directory, module_name='coco',
                                       config_name='2017')
  info = tfds.core.DatasetInfo(builder=identity, features=features)
  path = os.path.join(directory, 'coco-validation.array_record-00000-of-00001')
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for example in examples:
    writer.write(features.serialize_example(example))
  writer.close()
  template = tfds.core.ShardedFileTemplate(data_dir=directory, dataset_name='coco',
                                           split='validation', filetype_suffix='array_record')
  info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name='validation', shard_lengths=[len(examples)], num_bytes=0,
      filename_template=template)]))
  info.set_file_format('array_record')
  info.write_to_directory(directory)


def _jpeg(height, width, seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'JPEG')
  return buffer.getvalue()


def test_tfds_copy_gives_the_same_records_as_its_json(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sizes = {12: (40, 60), 5: (50, 30), 9: (32, 32)}
  boxes = {12: [(6, 4, 30, 20, 3, False), (0, 0, 60, 40, 79, True)], 5: [(3, 5, 27, 40, 0, False)],
           9: []}
  examples = []
  for image_id in (12, 5, 9):  # TFDS keeps the json's order; records sort by id
    height, width = sizes[image_id]
    objects = [{'id': k, 'area': int((x2 - x1) * (y2 - y1)), 'label': label, 'is_crowd': crowd,
                'bbox': tfds.features.BBox(y1 / height, x1 / width, y2 / height, x2 / width)}
               for k, (x1, y1, x2, y2, label, crowd) in enumerate(boxes[image_id])]
    examples.append({'image': _jpeg(height, width, image_id), 'image/filename': f'{image_id}.jpg',
                     'image/id': image_id, 'objects': objects})
  _write_tfds_copy(str(tmp_path), examples)
  cache = str(tmp_path / 'cache')
  split = coco.load('validation', 'tfds', str(tmp_path), cache_dir=cache)
  table = split.annotations
  assert table.image_ids.tolist() == [5, 9, 12]
  assert table.heights.tolist() == [50, 32, 40] and table.widths.tolist() == [30, 32, 60]
  assert table.category_ids == coco.COCO_CATEGORY_IDS and table.category_ids[79] == 90
  np.testing.assert_allclose(table.boxes[2], [[6, 4, 30, 20], [0, 0, 60, 40]], atol=1e-4)
  assert table.classes[2].tolist() == [3, 79] and table.crowd[2].tolist() == [False, True]
  assert len(table.boxes[1]) == 0 and table.training_indices().tolist() == [0, 2]
  assert split.read_image(0) == examples[1]['image']  # record 0 is image 5
  cached = coco.load('validation', 'tfds', str(tmp_path), cache_dir=cache).annotations
  assert len(os.listdir(cache)) == 1
  for name in ('image_ids', 'heights', 'widths', 'category_ids', 'class_names'):
    assert np.array_equal(getattr(table, name), getattr(cached, name)), name
  for name in ('boxes', 'classes', 'crowd', 'areas'):
    for row, again in zip(getattr(table, name), getattr(cached, name)):
      assert row.dtype == again.dtype and np.array_equal(row, again), name
  ids = sorted(i for b in pipeline.make_eval_batches(split, 3, **EVAL) for i in b['image_id']
               if i >= 0)
  assert ids == [5, 9, 12]
