"""kd_jax.data: CIFAR loading (pickle folders, TFDS, synthetic), augmentation, batch order."""
import importlib.resources
import io
import os
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax import data
from kd_jax.data import augment, batching, cifar
from kd_jax.errors import UserError

# ---------------------------------------------------------------- fixtures: tiny real layouts


def _rows(rng, n):
  """n images as the archives store them: uint8 rows of 3072 bytes, CHW order."""
  return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _images(n=16, seed=0):
  """Random uint8 NHWC images with no zero pixel (so zero padding is recognisable)."""
  return np.random.default_rng(seed).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)


def _dump(path, obj):
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=2)


def _write_cifar10_pickles(root, per_batch=4, num_test=10, seed=0):
  """cifar-10-batches-py/ with data_batch_1..5 and test_batch; returns (train, test) rows/labels."""
  rng = np.random.default_rng(seed)
  folder = root / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  train_rows, train_labels = [], []
  for i in range(1, 6):
    rows, labels = _rows(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
    _dump(folder / f'data_batch_{i}', {b'batch_label': b'training batch', b'labels': labels,
                                       b'data': rows, b'filenames': [b'x.png'] * per_batch})
    train_rows.append(rows)
    train_labels += labels
  test_rows, test_labels = _rows(rng, num_test), rng.integers(0, 10, num_test).tolist()
  _dump(folder / 'test_batch', {b'batch_label': b'testing batch', b'labels': test_labels,
                                b'data': test_rows, b'filenames': [b'x.png'] * num_test})
  return np.concatenate(train_rows), np.array(train_labels), test_rows, np.array(test_labels)


def _write_cifar100_pickles(root, num_train=20, num_test=10, seed=1):
  rng = np.random.default_rng(seed)
  folder = root / 'cifar-100-python'
  folder.mkdir(parents=True)
  out = []
  for name, n in (('train', num_train), ('test', num_test)):
    rows, fine = _rows(rng, n), rng.integers(0, 100, n).tolist()
    _dump(folder / name, {b'filenames': [b'x.png'] * n, b'batch_label': name.encode(),
                          b'fine_labels': fine, b'coarse_labels': [f // 5 for f in fine],
                          b'data': rows})
    out += [rows, np.array(fine)]
  return tuple(out)


def _expected_pixel(rows, n, h, w, c):
  """Pixel (n, h, w, c) of the NHWC result, read from the CHW byte row."""
  return rows[n, c * 1024 + h * 32 + w]


def _check_images(images, rows):
  assert images.dtype == np.uint8 and images.shape == (len(rows), 32, 32, 3)
  for n, h, w, c in [(0, 0, 0, 0), (0, 0, 1, 2), (1, 5, 7, 1), (len(rows) - 1, 31, 30, 2)]:
    assert images[n, h, w, c] == _expected_pixel(rows, n, h, w, c)
  np.testing.assert_array_equal(images, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- pickle folders


def test_cifar10_pickle_folder(tmp_path):
  train_rows, train_labels, test_rows, test_labels = _write_cifar10_pickles(tmp_path)
  ds = data.load('cifar10', data_dir=str(tmp_path))  # 'auto' finds the folder.
  assert ds.source == 'folder' and ds.num_classes == 10
  _check_images(ds.train_images, train_rows)
  _check_images(ds.test_images, test_rows)
  assert ds.train_labels.dtype == np.int32 and ds.train_labels.shape == (20,)
  np.testing.assert_array_equal(ds.train_labels, train_labels)
  np.testing.assert_array_equal(ds.test_labels, test_labels)
  assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)


def test_cifar100_pickle_folder_given_directly(tmp_path):
  train_rows, train_labels, test_rows, test_labels = _write_cifar100_pickles(tmp_path)
  ds = data.load('CIFAR-100', source='folder', data_dir=str(tmp_path / 'cifar-100-python'))
  assert ds.num_classes == 100 and ds.train_images.shape == (20, 32, 32, 3)
  _check_images(ds.train_images, train_rows)
  _check_images(ds.test_images, test_rows)
  np.testing.assert_array_equal(ds.train_labels, train_labels)
  np.testing.assert_array_equal(ds.test_labels, test_labels)
  assert ds.test_labels.dtype == np.int32
  assert ds.mean == (0.5071, 0.4867, 0.4408) and ds.std == (0.2675, 0.2565, 0.2761)


def test_pickle_folder_refuses_code_and_garbage(tmp_path):
  _write_cifar100_pickles(tmp_path)
  with open(tmp_path / 'cifar-100-python' / 'test', 'wb') as f:
    pickle.dump({b'data': os.system}, f)  # A pickle that would import a callable.
  with pytest.raises(UserError, match='not a CIFAR python batch'):
    data.load('cifar100', source='folder', data_dir=str(tmp_path))
  (tmp_path / 'cifar-100-python' / 'test').write_bytes(b'not a pickle')
  with pytest.raises(UserError, match='not a CIFAR python batch'):
    data.load('cifar100', source='folder', data_dir=str(tmp_path))


def test_missing_folder_and_bad_names(tmp_path):
  with pytest.raises(UserError, match='cifar-10-batches-py'):
    data.load('cifar10', source='folder', data_dir=str(tmp_path))
  _write_cifar10_pickles(tmp_path)
  (tmp_path / 'cifar-10-batches-py' / 'test_batch').unlink()
  with pytest.raises(UserError, match='incomplete.*test_batch'):  # 'auto' says what is missing.
    data.load('cifar10', data_dir=str(tmp_path))
  with pytest.raises(UserError, match=r"unknown dataset 'imagenet'.*cifar10, cifar100"):
    data.load('imagenet')
  with pytest.raises(UserError, match='unknown data source'):
    data.load('cifar10', source='web')


# ---------------------------------------------------------------- TFDS


def test_tfds_mock_data_source_without_tensorflow():
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load('cifar100', source='tfds')
  assert ds.source == 'tfds'
  for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 100


def _write_prepared_tfds_copy(root, images, labels):
  """A TFDS cifar10 copy prepared as array_record, written without TensorFlow.

  TFDS' own download_and_prepare of CIFAR needs TensorFlow; here the images are PNG-coded
  with PIL and the examples serialised by TFDS' features, which is TF-free.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('cifar10', data_dir=str(root), file_format='array_record')
  os.makedirs(builder.data_dir)
  splits = []
  for split in ('train', 'test'):
    path = os.path.join(builder.data_dir, f'cifar10-{split}.array_record-00000-of-00001')
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    for i, (image, label) in enumerate(zip(images[split], labels[split])):
      png = io.BytesIO()
      Image.fromarray(image).save(png, format='PNG')
      writer.write(builder.info.features.serialize_example(
          {'id': f'{split}_{i:05d}', 'image': png.getvalue(), 'label': int(label)}))
    writer.close()
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name='cifar10', split=split,
        filetype_suffix='array_record')
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(labels[split])],
                                      num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.set_file_format('array_record')
  builder.info.write_to_directory(builder.data_dir)


def test_tfds_prepared_array_record_copy_is_read_without_tensorflow(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  images = {'train': _images(6, seed=1), 'test': _images(3, seed=2)}
  labels = {'train': rng.integers(0, 10, 6), 'test': rng.integers(0, 10, 3)}
  _write_prepared_tfds_copy(tmp_path, images, labels)

  def no_download(self, url):
    raise AssertionError('a prepared copy must not be downloaded again')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', no_download)
  ds = data.load('cifar10', data_dir=str(tmp_path))
  assert ds.source == 'tfds'
  np.testing.assert_array_equal(ds.train_images, images['train'])  # Written in order.
  np.testing.assert_array_equal(ds.test_images, images['test'])
  np.testing.assert_array_equal(ds.train_labels, labels['train'])
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.shape == (3,)


def _binary_archive(path, spec, num_train, num_test, seed=0):
  """The binary .tar.gz TFDS' builder downloads: <label byte(s)><3072 CHW bytes> records."""
  rng = np.random.default_rng(seed)
  num_label_bytes = spec.binary_label_offset + 1
  split = {}
  with tarfile.open(path, 'w:gz') as archive:
    for names, n in ((spec.binary_train, num_train), (spec.binary_test, num_test)):
      rows, labels = [], []
      for name in names:
        label_bytes = rng.integers(0, spec.num_classes, (n, num_label_bytes), dtype=np.uint8)
        pixels = _rows(rng, n)
        payload = np.concatenate([label_bytes, pixels], axis=1).tobytes()
        info = tarfile.TarInfo(f'{spec.binary_dir}/{name}')
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
        rows.append(pixels)
        labels.append(label_bytes[:, -1])  # CIFAR-100: the fine label is the second byte.
      split[names] = (np.concatenate(rows), np.concatenate(labels))
  return split[spec.binary_train] + split[spec.binary_test]


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_tfds_download_path_parses_archive(tmp_path, monkeypatch, name):
  """No prepared copy: TFDS' download manager fetches the archive (faked here), parsed TF-free."""
  spec = cifar._SPECS[name]
  archive = tmp_path / 'archive.tar.gz'
  train_rows, train_labels, test_rows, test_labels = _binary_archive(archive, spec, 3, 4)
  requested = []
  monkeypatch.setattr(cifar, '_host_reachable', lambda url: True)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download',
                      lambda self, url: requested.append(url) or archive)
  ds = data.load(name, data_dir=str(tmp_path / 'tfds'))
  assert requested == [spec.archive_url] and ds.source == 'tfds'
  _check_images(ds.train_images, train_rows)
  _check_images(ds.test_images, test_rows)
  np.testing.assert_array_equal(ds.train_labels, train_labels)
  np.testing.assert_array_equal(ds.test_labels, test_labels)
  assert ds.train_labels.dtype == np.int32


def test_archive_checksums_match_tfds_registry():
  """The archive facts in cifar._SPECS are the ones TFDS ships for its cifar builders."""
  registry = importlib.resources.files('tensorflow_datasets') / 'url_checksums'
  for spec in cifar._SPECS.values():
    url, size, sha256, _ = (registry / f'{spec.tfds_name}.txt').read_text().split('\t')
    assert (url, int(size), sha256) == (spec.archive_url, spec.archive_size, spec.archive_sha256)


def _assert_not_found(err, folder):
  message = str(err.value)
  assert '\n' not in message
  assert folder in message and 'TFDS' in message and 'data_dir' in message


def test_offline_without_data_is_one_line_user_error(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar, '_host_reachable', lambda url: False)

  def no_download(self, url):
    raise AssertionError('must not try to download when the host is unreachable')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', no_download)
  with pytest.raises(UserError) as err:
    data.load('cifar100', data_dir=str(tmp_path))
  _assert_not_found(err, 'cifar-100-python/')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))  # data_dir=None: TFDS' default folder.
  with pytest.raises(UserError) as err:
    data.load('cifar10')
  _assert_not_found(err, 'cifar-10-batches-py/')


def test_download_failure_is_one_line_user_error(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar, '_host_reachable', lambda url: True)

  def failing_download(self, url):
    raise requests.exceptions.ConnectionError('Max retries exceeded\nsecond line')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', failing_download)
  with pytest.raises(UserError) as err:
    data.load('cifar10', source='tfds', data_dir=str(tmp_path))
  _assert_not_found(err, 'cifar-10-batches-py/')
  assert 'ConnectionError' in str(err.value)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable():
  ds = data.load('cifar10', source='synthetic', synthetic_train_size=400,
                 synthetic_test_size=200)
  again = data.load('cifar10', source='synthetic', synthetic_train_size=400,
                    synthetic_test_size=200)
  assert ds.train_images.shape == (400, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_labels.shape == (200,) and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images, again.train_images)
  # Nearest class mean on augmented images beats chance (10%) by far.
  images = augment.random_crop_flip(jax.random.key(0), ds.train_images)
  features = np.asarray(images, np.float32).reshape(400, -1)
  centroids = np.stack([features[ds.train_labels == c].mean(0) for c in range(10)])
  test = np.asarray(ds.test_images, np.float32).reshape(200, -1)
  predictions = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert np.mean(predictions == ds.test_labels) > 0.8


# ---------------------------------------------------------------- augmentation


def _reference_crop_flip(images, offsets, flips, padding=4):
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = np.stack([padded[i, r:r + 32, c:c + 32] for i, (r, c) in enumerate(offsets)])
  return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def test_crop_is_a_shift_of_the_zero_padded_image():
  images = _images(4)
  offsets = np.array([[0, 0], [8, 8], [4, 4], [1, 7]], np.int32)
  cropped = np.asarray(augment.crop(images, offsets))
  np.testing.assert_array_equal(cropped, _reference_crop_flip(images, offsets, [False] * 4))
  np.testing.assert_array_equal(cropped[2], images[2])  # Offset (4, 4) is the identity.
  assert (cropped[0, :4] == 0).all() and (cropped[0, :, :4] == 0).all()  # Zero padding.
  np.testing.assert_array_equal(cropped[0, 4:, 4:], images[0, :28, :28])
  np.testing.assert_array_equal(cropped[1, :28, :28], images[1, 4:, 4:])


def test_flip_mirrors_only_flagged_images():
  images = _images(2)
  flipped = np.asarray(augment.flip(images, jnp.array([True, False])))
  np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
  np.testing.assert_array_equal(flipped[1], images[1])


def test_random_crop_flip_matches_reference_and_is_keyed():
  images = _images(32)
  key = jax.random.key(3)
  out = np.asarray(jax.jit(augment.random_crop_flip)(key, images))
  offsets, flips = augment.crop_flip_params(key, 32)
  assert out.dtype == np.uint8 and out.shape == images.shape
  np.testing.assert_array_equal(out, _reference_crop_flip(images, np.asarray(offsets), flips))
  np.testing.assert_array_equal(out, np.asarray(augment.random_crop_flip(key, images)))
  other = np.asarray(augment.random_crop_flip(jax.random.key(4), images))
  assert not np.array_equal(out, other)
  # Per sample: one image repeated comes out in many different crops/flips.
  same = np.repeat(images[:1], 32, axis=0)
  outs = np.asarray(augment.random_crop_flip(key, same)).reshape(32, -1)
  assert len(np.unique(outs, axis=0)) > 16


def test_crop_flip_parameters_cover_the_torchvision_range():
  offsets, flips = augment.crop_flip_params(jax.random.key(0), 4096)
  offsets = np.asarray(offsets)
  assert offsets.min() == 0 and offsets.max() == 8
  assert set(np.unique(offsets[:, 0])) == set(range(9))
  assert 0.45 < np.mean(np.asarray(flips)) < 0.55


def test_random_crop_flip_same_on_8_sharded_devices():
  images = _images(16)
  key = jax.random.key(7)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  sharded = jax.device_put(images, NamedSharding(mesh, P('data')))
  out = jax.jit(augment.random_crop_flip)(key, sharded)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(augment.random_crop_flip(key, images)))


def test_normalize_matches_numpy():
  images = _images(3)
  mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
  out = jax.jit(augment.normalize)(images, jnp.asarray(mean), jnp.asarray(std))
  expected = (images.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  assert augment.normalize(images, mean, std, jnp.bfloat16).dtype == jnp.bfloat16


# ---------------------------------------------------------------- batch order


def test_epoch_permutation_deterministic_and_changes_per_epoch():
  perm = np.asarray(batching.epoch_permutation(0, 0, 100))
  assert perm.dtype == np.int32
  np.testing.assert_array_equal(np.sort(perm), np.arange(100))
  np.testing.assert_array_equal(perm, np.asarray(batching.epoch_permutation(0, 0, 100)))
  assert not np.array_equal(perm, np.asarray(batching.epoch_permutation(0, 1, 100)))
  assert not np.array_equal(perm, np.asarray(batching.epoch_permutation(1, 0, 100)))
  jitted = jax.jit(batching.epoch_permutation, static_argnums=2)(jnp.int32(0), jnp.int32(1), 100)
  np.testing.assert_array_equal(np.asarray(jitted),
                                np.asarray(batching.epoch_permutation(0, 1, 100)))


def test_steps_per_epoch_drops_the_last_partial_batch():
  assert batching.steps_per_epoch(50000, 64) == 781
  assert batching.steps_per_epoch(128, 64) == 2
  with pytest.raises(UserError):
    batching.steps_per_epoch(10, 64)
  with pytest.raises(UserError):
    batching.steps_per_epoch(10, 0)


def test_batch_indices_slices_the_permutation():
  perm = batching.epoch_permutation(0, 0, 10)
  step = jax.jit(batching.batch_indices, static_argnums=2)(perm, 1, 4)
  np.testing.assert_array_equal(np.asarray(step), np.asarray(perm)[4:8])


@pytest.mark.parametrize('num_examples,batch_size', [(10, 4), (12, 4), (3, 8), (1, 1)])
def test_eval_batches_count_each_example_once(num_examples, batch_size):
  batches = batching.eval_batches(num_examples, batch_size)
  assert len(batches) == -(-num_examples // batch_size)
  counts = np.zeros(num_examples, int)
  for index, mask in batches:
    assert index.shape == mask.shape == (batch_size,) and index.dtype == np.int32
    assert mask.dtype == bool
    np.add.at(counts, index[mask], 1)
    assert (index[~mask] == 0).all()
  np.testing.assert_array_equal(counts, 1)
