"""Images/s of the ImageNet host pipeline, next to torchvision's, on JPEGs written here.

  python -m benchmarks.input_pipeline [--images 1000] [--dir DIR] [--batch-size 16]
      [--settings auto,t1,t2,t4,t16,w2] [--torch-workers 1,2] [--no-torch]
      [--splits train,eval] [--repeats 9] [--block-batches 96] [--stage-images 300]
      [--train-augment crop_flip|rand-m9-mstd0.5-inc1] [--interpolation bilinear|bicubic]
  python -m benchmarks.input_pipeline --flops res34_res18,res50_mbv1

Data: `--images` JPEGs of ImageNet's usual sizes (mostly 500x375 and 375x500, some
500x333 / 500x500 / larger; see SIZES) with natural-image-like content (1/f noise, so
they compress to ImageNet's ~110 KB per image at quality 90), written once under --dir
both in the TFDS `imagenet2012` array_record layout that kd_jax reads (both splits hold
the same images) and as an ImageFolder (10 class folders) for torchvision.

Pipelines, uint8 224x224 batches of --batch-size, no normalisation on either side:
  kd_jax train / eval   imagenet.make_train_iterator / make_eval_batches on the array_record
                        copy; settings 'auto' (the default: kd_jax.data.parallelism),
                        'tN' (N threads, this process), 'wN' (N worker processes, threads
                        split among them), 'wNtM'
  torchvision           ImageFolder + DataLoader(num_workers=N) with RandomResizedCrop(224)
                        + RandomHorizontalFlip + PILToTensor (train), Resize(256) +
                        CenterCrop(224) + PILToTensor (eval): the same Pillow operations
With --train-augment (a timm RandAugment policy) or --interpolation bicubic (DeiT's host
transform: kd_jax.data.pil_rand_augment), kd_jax runs that setting and the torch side is
timm's create_transform(auto_augment=..., interpolation=..., color_jitter=None) with
uint8 output (`use_prefetcher=True`: no normalisation, no random erasing), eval
Resize(256, interpolation) + CenterCrop(224); the stage breakdown adds 'rand_augment'.
Each timed block starts a fresh iterator, discards its first batches (the pipeline
filling up: as many as it holds in flight) and times the next --block-batches; all the
pipelines take turns, block after block, and each figure is the median over --repeats
blocks (the machine may be shared). Blocks must be long next to what a setting reads
ahead: with 16-batch blocks, 16 threads' read-ahead (decoded while the first batches
were being discarded) made them look up to 3x faster than the cores allow.
`vs_<first setting>` is the median over rounds of each block's rate over the first
setting's in the same round, and `cpu_ms_per_image` the CPU time of this process and its
worker processes per image (what a setting costs, whatever share of a shared machine it gets).

Per-stage breakdown (`kind` 'stage', one thread, ms per image, median of 3 passes over
--stage-images images): read (the array_record record), python (JPEG header, random
generator, crop draw), decode (Pillow, with the draft the crop permits for train; full
for eval), crop_resize, flip_to_array / to_array, batch (np.stack). Then
`pipeline_overhead_ms_per_image`: the grain pipeline with a do-nothing transform (order,
read, grain's maps, batching): with read and python, the part of each image that holds
the GIL, which bounds what threads in one process can feed.
"""
import argparse
import importlib.metadata
import io
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

import benchmarks

# (width, height): weights roughly as in ImageNet's training set (500 px on the long side
# for most images, landscape 3:4 the commonest).
SIZES = {(500, 375): 0.45, (375, 500): 0.15, (500, 333): 0.15, (500, 500): 0.08,
         (333, 500): 0.05, (640, 480): 0.06, (1024, 768): 0.03, (300, 225): 0.03}
NUM_CLASSES = 10
QUALITY = 90
IMAGE_SIZE = 224


# ---------------------------------------------------------------- data


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """uint8 [H, W, 3] with a 1/f amplitude spectrum (as natural images) and mild colour."""
  def pink(scale):
    spectrum = rng.standard_normal((height, width // 2 + 1)) + 1j * rng.standard_normal(
        (height, width // 2 + 1))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    spectrum /= np.maximum(np.hypot(fx, fy), 1.0 / max(width, height)) ** 1.0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return scale * field / field.std()

  luma = pink(48.0)
  channels = [luma + pink(12.0) + rng.uniform(90, 160) for _ in range(3)]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=QUALITY)
  return buffer.getvalue()


def _write_array_record(root, images, labels):
  """Both splits of an imagenet2012 array_record copy, as `tfds build` leaves it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from kd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=root, file_format='array_record')
  os.makedirs(builder.data_dir, exist_ok=True)
  splits = []
  for split in ('train', 'validation'):
    path = os.path.join(builder.data_dir,
                        f'{imagenet.TFDS_NAME}-{split}.array_record-00000-of-00001')
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    for i, (image, label) in enumerate(zip(images, labels)):
      writer.write(builder.info.features.serialize_example(
          {'file_name': f'{split}_{i}.JPEG', 'image': image, 'label': label}))
    writer.close()
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=imagenet.TFDS_NAME, split=split,
        filetype_suffix='array_record')
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(images)], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.set_file_format('array_record')
  builder.info.write_to_directory(builder.data_dir)


def write_images(root: str, count: int, seed: int = 0) -> dict:
  """JPEGs under root/tfds (array_record) and root/folder/{train,val}/<class>/; reused
  when root already holds the same count and seed. Returns their description."""
  marker = os.path.join(root, 'images.json')
  if os.path.exists(marker):
    with open(marker) as f:
      info = json.load(f)
    if info['count'] == count and info['seed'] == seed:
      return info
  rng = np.random.default_rng(seed)
  sizes = list(SIZES)
  picks = rng.choice(len(sizes), size=count, p=np.array(list(SIZES.values())) / sum(
      SIZES.values()))
  images, labels = [], []
  for i, pick in enumerate(picks):
    images.append(jpeg_bytes(natural_image(rng, *sizes[pick])))
    labels.append(i % NUM_CLASSES)
  _write_array_record(os.path.join(root, 'tfds'), images, labels)
  for split in ('train', 'val'):
    for i, (image, label) in enumerate(zip(images, labels)):
      folder = os.path.join(root, 'folder', split, f'class{label:02d}')
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, f'{i:06d}.JPEG'), 'wb') as f:
        f.write(image)
  lengths = [len(image) for image in images]
  info = {'count': count, 'seed': seed, 'mean_kb': round(statistics.mean(lengths) / 1024, 1),
          'median_pixels': int(statistics.median(sizes[p][0] * sizes[p][1] for p in picks)),
          'quality': QUALITY}
  with open(marker, 'w') as f:
    json.dump(info, f)
  return info


# ---------------------------------------------------------------- pipelines


def cpu_seconds() -> float:
  """CPU time (user + system) of this process and its live children (worker processes).

  Per image, it is the pipeline's cost whatever share of the cores it gets: on a shared
  machine it varies less than the wall-clock rate. Needs psutil (else process time only).
  """
  try:
    import psutil  # pylint: disable=g-import-not-at-top
  except ImportError:
    return time.process_time()
  total = 0.0
  me = psutil.Process()
  for process in [me, *me.children(recursive=True)]:
    try:
      times = process.cpu_times()
      total += times.user + times.system
    except psutil.Error:
      pass
  return total


def parse_setting(setting: str) -> tuple[int, int]:
  """'auto' -> (0, -1); 'tN' -> (N, 0); 'wN' -> (0, N); 'wNtM' -> (M, N)."""
  from kd_jax.data import parallelism  # pylint: disable=g-import-not-at-top
  if setting == 'auto':
    return parallelism.AUTO_THREADS, parallelism.AUTO_WORKERS
  threads, workers = 0, 0
  rest = setting
  if rest.startswith('w'):
    digits = ''.join(itertools.takewhile(str.isdigit, rest[1:]))
    workers, rest = int(digits or 'x'), rest[1 + len(digits):]
  if rest.startswith('t'):
    threads, rest = int(rest[1:] or 'x'), ''
  if rest or (threads, workers) == (0, 0):
    raise ValueError(f'bad setting {setting!r}: auto, tN, wN or wNtM')
  return threads, workers


class KdJaxBench:
  """kd_jax's grain pipeline (train or eval) with one parallelism setting."""

  def __init__(self, split, setting, data_dir, batch_size, block_batches,
               train_augment='crop_flip', interpolation='bilinear'):
    from kd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    self.split, self.batch_size, self.block_batches = split, batch_size, block_batches
    threads, workers = parse_setting(setting)
    self.threads, self.workers = imagenet.host_parallelism(threads, workers)
    self.records = imagenet.open_split('train' if split == 'train' else 'validation',
                                       data_dir=data_dir)
    common = dict(records=self.records, image_size=IMAGE_SIZE, process_index=0,
                  process_count=1, num_threads=threads, worker_count=workers,
                  interpolation=interpolation)
    if split == 'train':
      self._make = lambda epoch: imagenet.make_train_iterator(
          batch_size, seed=epoch, train_augment=train_augment, **common)
    else:
      self._make = lambda epoch: iter(imagenet.make_eval_batches(batch_size, **common))
    # Batches started at once: each thread's, plus one queued per worker process.
    self.skip = self.threads if not self.workers else self.workers * (self.threads + 1)
    self.record = {'framework': 'kd_jax', 'split': split, 'setting': setting,
                   'threads': self.threads, 'workers': self.workers,
                   'train_augment': train_augment, 'interpolation': interpolation}
    self._epoch = 0

  def time_block(self):
    self._epoch += 1
    iterator = self._make(self._epoch)
    for _ in range(self.skip):
      next(iterator)
    cpu, start = cpu_seconds(), time.perf_counter()
    for _ in range(self.block_batches):
      batch = next(iterator)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert batch['image'].shape == (self.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)
    if hasattr(iterator, 'close'):
      iterator.close()
    return seconds, cpu, self.block_batches * self.batch_size


def import_torchvision():
  """torchvision, or None. The CUDA build of torchvision (the only one some package
  mirrors have) cannot load its C ops next to a CPU torch and fails registering their
  fake kernels at import; this benchmark uses only its pure-Python datasets/transforms,
  so that registration is skipped when the plain import fails."""
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision
  except ImportError:
    return None
  except RuntimeError:
    for name in list(sys.modules):
      if name.startswith('torchvision'):
        del sys.modules[name]
    import torch.library  # pylint: disable=g-import-not-at-top
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
    finally:
      torch.library.register_fake = register_fake
    return torchvision


class TorchvisionBench:
  """ImageFolder + DataLoader(num_workers) with the same Pillow transforms."""

  def __init__(self, split, workers, folder, batch_size, block_batches,
               train_augment='crop_flip', interpolation='bilinear'):
    import torch  # pylint: disable=g-import-not-at-top
    torchvision = import_torchvision()
    transforms = torchvision.transforms
    mode = transforms.InterpolationMode(interpolation)
    deit = (train_augment, interpolation) != ('crop_flip', 'bilinear')
    framework = 'timm' if deit and split == 'train' else 'torchvision'
    if split == 'train' and deit:
      from timm.data import create_transform  # pylint: disable=g-import-not-at-top
      transform = create_transform(
          IMAGE_SIZE, is_training=True, color_jitter=None, interpolation=interpolation,
          auto_augment=None if train_augment == 'crop_flip' else train_augment,
          use_prefetcher=True)
    elif split == 'train':
      transform = transforms.Compose([transforms.RandomResizedCrop(IMAGE_SIZE),
                                      transforms.RandomHorizontalFlip(),
                                      transforms.PILToTensor()])
    else:
      transform = transforms.Compose([transforms.Resize(round(IMAGE_SIZE / 0.875), mode),
                                      transforms.CenterCrop(IMAGE_SIZE),
                                      transforms.PILToTensor()])
    dataset = torchvision.datasets.ImageFolder(
        os.path.join(folder, 'train' if split == 'train' else 'val'), transform=transform)
    self._loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=split == 'train', num_workers=workers,
        drop_last=split == 'train')
    self.batch_size, self.block_batches, self.workers = batch_size, block_batches, workers
    self.skip = 2 * workers  # DataLoader's prefetch_factor (2) batches per worker
    self.record = {'framework': framework, 'split': split, 'setting': f'workers={workers}',
                   'workers': workers, 'train_augment': train_augment,
                   'interpolation': interpolation}

  def time_block(self):
    iterator = iter(self._loader)
    for _ in range(self.skip):
      next(iterator)
    cpu, start = cpu_seconds(), time.perf_counter()
    for _ in range(self.block_batches):
      images, _ = next(iterator)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert tuple(images.shape) == (self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
    del iterator  # shuts its workers down
    return seconds, cpu, self.block_batches * self.batch_size


# ---------------------------------------------------------------- per-stage breakdown


def stage_breakdown(data_dir, count, batch_size, passes=3, train_augment='crop_flip',
                    interpolation='bilinear'):
  """ms per image of each stage of the train and eval transforms, one thread."""
  from kd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  augment = imagenet.rand_augment(train_augment, interpolation)
  records = imagenet.open_split('train', data_dir=data_dir)
  count = min(count, len(records))
  results = {'train': {}, 'eval': {}}
  clock = time.perf_counter
  for _ in range(passes):
    totals = {'train': {}, 'eval': {}}

    def add(split, stage, seconds):
      totals[split][stage] = totals[split].get(stage, 0.0) + seconds

    outputs = []
    for i in range(count):
      t0 = clock()
      record = records[i]
      t1 = clock()
      rng = np.random.default_rng([0, 1, 2, i])
      picture = imagenet.open_image(record['image'])
      left, top, width, height = imagenet.random_resized_crop_box(rng, *picture.size)
      t2 = clock()
      picture, box = imagenet.decode_for_crop(picture, (left, top, left + width, top + height),
                                              IMAGE_SIZE)
      picture.load()
      t3 = clock()
      out = imagenet.crop_resize(picture, box, IMAGE_SIZE, interpolation)
      t4 = clock()
      if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
      t_flip = clock()
      if augment is not None:
        out = augment(out, rng)
      t_augment = clock()
      outputs.append(np.asarray(out, np.uint8))
      t5 = clock() - (t_augment - t_flip)
      add('train', 'read', t1 - t0)
      add('train', 'python', t2 - t1)
      add('train', 'decode', t3 - t2)
      add('train', 'crop_resize', t4 - t3)
      add('train', 'flip_to_array', t5 - t4)
      if augment is not None:
        add('train', 'rand_augment', t_augment - t_flip)
      # eval: full decode, then Resize(256) + CenterCrop(224) as eval_transform does
      t6 = clock()
      full = imagenet.open_image(record['image'])
      full.load()
      full = full.convert('RGB')
      t7 = clock()
      out = imagenet.eval_resize(full, IMAGE_SIZE, interpolation)
      t8 = clock()
      np.asarray(out, np.uint8)
      t9 = clock()
      add('eval', 'read', t1 - t0)
      add('eval', 'decode', t7 - t6)
      add('eval', 'crop_resize', t8 - t7)
      add('eval', 'to_array', t9 - t8)
    start_stack = clock()
    for start in range(0, count - batch_size + 1, batch_size):
      np.stack(outputs[start:start + batch_size])
    stacked = (count // batch_size) * batch_size
    add('train', 'batch', (clock() - start_stack) * count / max(stacked, 1))
    add('eval', 'batch', totals['train']['batch'])
    for split in totals:
      for stage, seconds in totals[split].items():
        results[split].setdefault(stage, []).append(1e3 * seconds / count)
  records_out = []
  for split, stages in results.items():
    medians = {stage: round(statistics.median(ms), 3) for stage, ms in stages.items()}
    total = sum(medians.values())
    records_out.append({'kind': 'stage', 'split': split, 'images': count,
                        'train_augment': train_augment, 'interpolation': interpolation,
                        'ms_per_image': medians, 'total_ms': round(total, 3),
                        'share': {s: round(v / total, 3) for s, v in medians.items()},
                        'images_per_second_one_thread': round(1e3 / total, 1)})
  return records_out


def grain_overhead(data_dir, count, batch_size):
  """ms per image of the pipeline with a do-nothing transform (order, read, grain's maps,
  batching), one thread: the part of each image that holds the GIL besides the crop draw."""
  import grain  # pylint: disable=g-import-not-at-top
  from kd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  records = imagenet.open_split('train', data_dir=data_dir)
  tiny = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)

  class Nothing(grain.transforms.Map):
    def map(self, element):
      np.random.default_rng([0, 1, element['epoch'], element['position']])
      return {'image': tiny, 'label': np.int32(element['label']),
              'index': np.int32(element['index'])}

  order = imagenet._TrainOrder(len(records), batch_size, 0, 1, 0, 1)  # pylint: disable=protected-access
  batches = (grain.MapDataset.source(order).map(imagenet._Read(records))  # pylint: disable=protected-access
             .map(Nothing()).batch(batch_size, drop_remainder=True))
  n = min(count // batch_size, len(batches))
  start = time.perf_counter()
  for k in range(n):
    batches[k]
  return 1e3 * (time.perf_counter() - start) / (n * batch_size)


# ---------------------------------------------------------------- what the step consumes


def kd_step_flops(pair: str, batch_size: int = 8, method: str = 'kd') -> dict:
  """FLOPs per image of the compiled ImageNet KD train step (XLA cost analysis).

  The step of configs/imagenet_<method>.py:<pair> (teacher forward, student forward and
  backward, loss, SGD) on one device, random weights, `batch_size` 224x224 images; its
  FLOPs scale with the batch, so a small one gives the per-image figure.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import methods, models, train  # pylint: disable=g-import-not-at-top
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.imagenet_{method}').get_config(pair)
  config.data.update(dict(source='synthetic', synthetic_train_size=batch_size,
                          synthetic_test_size=batch_size, synthetic_image_size=IMAGE_SIZE))
  config.batch_size = config.eval_batch_size = batch_size
  mesh = train.data_mesh(jax.devices()[:1])
  feeder = feeders.create(config, mesh)
  method_object = methods.create(config.method)
  teacher = models.create(config.teacher.model, feeder.info.num_classes, rngs=nnx.Rngs(1))
  student = train.create_student(config, feeder.info.num_classes)
  setup = methods.Setup(student, teacher, feeder, nnx.Rngs(2), cached=lambda name, shape, _: (
      jax.random.uniform(jax.random.key(3), shape)))
  trainer = train.Trainer(config, feeder, student, teacher, method_object, mesh,
                          method_object.extras(setup), method_object.frozen(setup))
  start = time.perf_counter()
  compiled = trainer.train_step.lower(trainer.state, trainer.init_metric_sums(),
                                      trainer.frozen, feeder.example_train_batch()).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return {'kind': 'flops', 'pair': pair, 'method': method, 'teacher': config.teacher.model,
          'student': config.student.model, 'batch_size': batch_size,
          'step_gflops_per_image': round(float(analysis['flops']) / batch_size / 1e9, 3),
          'platform': jax.devices()[0].platform, 'compile_s': round(time.perf_counter() - start, 1),
          'how': 'jax.jit(step).lower(...).compile().cost_analysis()["flops"] / batch'}


# ---------------------------------------------------------------- main


def versions():
  out = {}
  for name in ('pillow', 'grain', 'numpy', 'torch', 'torchvision', 'tensorflow-datasets',
               'array-record'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  torchvision = None
  try:
    torchvision = import_torchvision()
  except Exception:  # pylint: disable=broad-except
    pass
  if torchvision is not None:
    out['torchvision'] = torchvision.__version__
  from PIL import features  # pylint: disable=g-import-not-at-top
  out['libjpeg_turbo'] = features.version('libjpeg_turbo')
  return out


def run(images=1000, data_dir=None, batch_size=16, settings=('auto', 't1', 't2', 't4', 't16'),
        torch_workers=(1, 2), splits=('train', 'eval'), repeats=9, block_batches=16,
        stage_images=300, with_torch=True, stream=None, train_augment='crop_flip',
        interpolation='bilinear'):
  """Writes (or reuses) the images, runs every bench; returns (and prints) JSON records."""
  from kd_jax.data import parallelism  # pylint: disable=g-import-not-at-top
  owned = data_dir is None
  data_dir = data_dir or tempfile.mkdtemp(prefix='kd_jax_input_')
  records = []

  def emit(record):
    records.append(record)
    if stream is not None:
      benchmarks.emit(record, stream)

  start = time.perf_counter()
  info = write_images(data_dir, images)
  emit({'kind': 'host', **benchmarks.host_info(), 'usable_cores': parallelism.usable_cores(),
        'load_average': os.getloadavg(), **versions(), 'images': info,
        'write_s': round(time.perf_counter() - start, 1)})
  for record in stage_breakdown(os.path.join(data_dir, 'tfds'), stage_images, batch_size,
                                train_augment=train_augment, interpolation=interpolation):
    emit(record)
  emit({'kind': 'stage', 'split': 'train', 'pipeline_overhead_ms_per_image': round(
      grain_overhead(os.path.join(data_dir, 'tfds'), stage_images, batch_size), 3)})
  with_torch = with_torch and import_torchvision() is not None
  for split in splits:
    augmentation = dict(train_augment=train_augment, interpolation=interpolation)
    benches = [KdJaxBench(split, s, os.path.join(data_dir, 'tfds'), batch_size, block_batches,
                          **augmentation) for s in settings]
    if with_torch:
      benches += [TorchvisionBench(split, w, os.path.join(data_dir, 'folder'), batch_size,
                                   block_batches, **augmentation) for w in torch_workers]
    per_bench = [[] for _ in benches]
    for r in range(repeats):
      load = os.getloadavg()[0]
      order = list(range(len(benches)))
      shift = r % len(order)
      for i in order[shift:] + order[:shift]:
        seconds, cpu, count = benches[i].time_block()
        per_bench[i].append((count / seconds, load, 1e3 * cpu / count))
    reference = [rate for rate, *_ in per_bench[0]]
    for bench, samples in zip(benches, per_bench):
      rates = [rate for rate, *_ in samples]
      emit({'kind': 'measurement', **bench.record, 'batch_size': batch_size,
            'images_per_second': round(statistics.median(rates), 1),
            'samples': [round(x, 1) for x in rates],
            'cpu_ms_per_image': round(statistics.median(c for *_, c in samples), 3),
            # this bench / the first setting, in the same round: less sensitive to load
            f'vs_{settings[0]}': round(statistics.median(
                r / ref for r, ref in zip(rates, reference)), 3),
            'load_average_1min': [round(load, 2) for _, load, _ in samples]})
  emit({'kind': 'done', 'load_average': os.getloadavg(),
        'total_s': round(time.perf_counter() - start, 1)})
  if owned:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(data_dir, ignore_errors=True)
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=1000)
  parser.add_argument('--dir', default=None, help='where the JPEGs go (kept; reused)')
  parser.add_argument('--batch-size', type=int, default=16)
  parser.add_argument('--settings', default='auto,t1,t2,t4,t16',
                      help='kd_jax settings: auto, tN, wN, wNtM (comma-separated)')
  parser.add_argument('--torch-workers', default='1,2')
  parser.add_argument('--no-torch', action='store_true')
  parser.add_argument('--splits', default='train,eval')
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument('--block-batches', type=int, default=96)
  parser.add_argument('--stage-images', type=int, default=300)
  parser.add_argument('--train-augment', default='crop_flip',
                      help='crop_flip or a timm RandAugment policy, e.g. rand-m9-mstd0.5-inc1')
  parser.add_argument('--interpolation', default='bilinear', help='bilinear or bicubic')
  parser.add_argument('--flops', default='',
                      help='only the KD step FLOPs per image of these ImageNet pairs, e.g. '
                           'res34_res18,res50_mbv1')
  args = parser.parse_args(argv)
  if args.flops:
    for pair in args.flops.split(','):
      benchmarks.emit(kd_step_flops(pair))
    return
  settings = args.settings.split(',')
  for setting in settings:
    try:
      parse_setting(setting)
    except ValueError as error:
      parser.error(str(error))
  from kd_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  from kd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    imagenet.rand_augment(args.train_augment, args.interpolation)
    imagenet.crop_resize(Image.new('RGB', (2, 2)), (0, 0, 2, 2), 1, args.interpolation)
  except UserError as error:
    parser.error(str(error))
  splits = args.splits.split(',')
  if not set(splits) <= {'train', 'eval'}:
    parser.error(f'--splits takes train and/or eval, got {args.splits!r}')
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  run(args.images, args.dir, args.batch_size, settings,
      [int(w) for w in args.torch_workers.split(',') if w], splits, args.repeats,
      args.block_batches, args.stage_images, not args.no_torch, stream=sys.stdout,
      train_augment=args.train_augment, interpolation=args.interpolation)


if __name__ == '__main__':
  main()
