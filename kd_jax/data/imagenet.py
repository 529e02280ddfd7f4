"""ImageNet (ILSVRC 2012) on the host: TFDS array_record files read by a grain pipeline.

Data. TFDS `imagenet2012` is a manual download. Prepare it once, on any machine that has
TensorFlow (TFDS needs it to prepare ImageNet; reading it here does not):
  1. register at https://image-net.org/download-images and put ILSVRC2012_img_train.tar and
     ILSVRC2012_img_val.tar in TFDS' manual_dir, `<data_dir>/downloads/manual/`;
  2. pip install tensorflow tensorflow-datasets
     tfds build imagenet2012 --data_dir=<data_dir> \
         --manual_dir=<data_dir>/downloads/manual --file_format=array_record
array_record (not TFDS' default tfrecord) is what gives `tfds.data_source` random access.

Pipeline, the same for source='tfds' and source='synthetic':
  order -> read -> decode + augment (PIL) -> batch -> thread (and optional process) prefetch.
The order is global: a permutation of the training set per (seed, epoch); global batch b
holds positions [b*G, (b+1)*G) of it and host p takes the contiguous slice of G/P examples
at p*G/P. Augmentation randomness is keyed by (seed, epoch, position), so a pod sees, pixel
for pixel, the batches a single host would: the result does not depend on the host count.

Train: RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip, as
torchvision; eval: Resize(256) (shorter side) + CenterCrop(224). Both resize bilinearly by
default, or bicubically (`interpolation='bicubic'`, DeiT's recipe). `train_augment` is
'crop_flip' (the above) or a timm RandAugment policy such as 'rand-m9-mstd0.5-inc1' applied
after the flip (DeiT's `create_transform`, kd_jax.data.pil_rand_augment). Batches hold
uint8 NHWC images; normalise on the device: `augment.normalize(images, IMAGENET_MEAN,
IMAGENET_STD)` (random erasing and mixup, if any, also run there).
JPEGs are decoded by Pillow (as TFDS itself does without OpenCV); training decodes at a
reduced DCT scale (`Image.draft`) when the crop is shrunk by 2x or more anyway; eval
resizes only the center box it keeps. Threads and worker processes default to the host's
usable cores (kd_jax.data.parallelism); benchmarks/input_pipeline.py measures the rate.
"""
import collections
from collections import abc
import io
import math
import os
import struct
import threading
from typing import Any

from absl import flags
import grain
import numpy as np
from PIL import Image

from kd_jax.data import batching
from kd_jax.data import parallelism
from kd_jax.data import pil_rand_augment
from kd_jax.errors import UserError

TFDS_NAME = 'imagenet2012'
NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ('tfds', 'synthetic')
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # 224 / 256: eval resizes the shorter side to image_size / 0.875.
SYNTHETIC_SIZES = {'train': 1024, 'validation': 256}
CROP_FLIP = 'crop_flip'  # train_augment without RandAugment
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}

# Seed streams, so the data order and the augmentation are not the same random numbers.
_ORDER_STREAM = 0x1A0D
_AUGMENT_STREAM = 0x1AA6
_FOREVER_EPOCHS = 10**6  # num_epochs=None: an iterator that, in practice, never ends.


# ---------------------------------------------------------------- sources


def open_split(split: str, source: str = 'tfds', data_dir: str | None = None, *,
               synthetic_size: int | None = None,
               synthetic_image_shape: tuple[int, int] = (64, 64)) -> abc.Sequence[dict]:
  """A random-access sequence of {'image', 'label'} examples of one split.

  'tfds' images are JPEG bytes (or decoded uint8 arrays, e.g. under
  `tfds.testing.mock_data`); 'synthetic' images are uint8 arrays of
  `synthetic_image_shape` (height, width), deterministic per split and index.
  """
  if source == 'tfds':
    return _open_tfds(split, data_dir)
  if source == 'synthetic':
    size = SYNTHETIC_SIZES.get(split, 256) if synthetic_size is None else synthetic_size
    return SyntheticSplit(size, synthetic_image_shape, seed=0 if split == 'train' else 1)
  raise UserError(f'unknown ImageNet source {source!r}; valid: {", ".join(SOURCES)}')


def num_examples(split: str, source: str = 'tfds', data_dir: str | None = None, *,
                 synthetic_size: int | None = None) -> int:
  """Number of examples in `split` (ImageNet: train 1,281,167, validation 50,000)."""
  return len(open_split(split, source, data_dir, synthetic_size=synthetic_size))


def steps_per_epoch(num_train_examples: int, global_batch_size: int) -> int:
  """Training steps per epoch; the last partial global batch is dropped."""
  return batching.steps_per_epoch(num_train_examples, global_batch_size)


def num_eval_batches(num_eval_examples: int, global_batch_size: int) -> int:
  """Eval batches per pass (every host runs this many); the last one is padded."""
  if global_batch_size < 1:
    raise UserError(f'eval batch_size must be >= 1, got {global_batch_size}')
  return -(-num_eval_examples // global_batch_size)


def _open_tfds(split: str, data_dir: str | None):
  """`tfds.data_source` with images kept as JPEG bytes (decoded later, by Pillow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  root = os.path.expanduser(data_dir or tfds.core.constants.get_default_data_dir())
  skip_decoding = {'image': tfds.decode.SkipDecoding()}
  try:
    source = tfds.data_source(TFDS_NAME, split=split, data_dir=root, download=False,
                              decoders=skip_decoding)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          tfds.core.DatasetNotFoundError) as err:
    # NotImplementedError: nothing there, or a tfrecord copy (no random access).
    raise _not_prepared(root) from err
  except ValueError as err:  # Prepared, but without this split.
    raise UserError(f'{TFDS_NAME} under {root} has no split {split!r}: '
                    f'{str(err).splitlines()[0][:200]}') from err
  if len(source):
    try:
      source[0]
    except ImportError:
      # tfds.testing.mock_data can hand out encoded images only through TensorFlow;
      # let TFDS decode them (to uint8 arrays) instead.
      source = tfds.data_source(TFDS_NAME, split=split, data_dir=root, download=False)
  return source


def _not_prepared(root: str) -> UserError:
  """The one-line 'download and prepare it' message, naming TFDS' manual_dir."""
  manual_dir = os.path.join(root, 'downloads', 'manual')
  info = os.path.join(root, TFDS_NAME)
  tfrecord = os.path.isdir(info) and any(
      os.path.isfile(os.path.join(info, v, 'dataset_info.json')) for v in os.listdir(info))
  state = 'is prepared as tfrecord, not array_record,' if tfrecord else 'is not prepared'
  return UserError(
      f'ImageNet ({TFDS_NAME}) {state} under data_dir={root}: download '
      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org into '
      f'manual_dir={manual_dir}, then run once (needs tensorflow): tfds build {TFDS_NAME} '
      f'--data_dir={root} --manual_dir={manual_dir} --file_format=array_record')


class SyntheticSplit(abc.Sequence):
  """Random uint8 images (no JPEG) of one size whose label is visible as a mean colour."""

  def __init__(self, size: int, image_shape: tuple[int, int] = (64, 64), seed: int = 0):
    if size < 1 or len(image_shape) != 2 or min(image_shape) < 1:
      raise UserError(f'synthetic ImageNet needs size >= 1 and an image shape (H, W), got '
                      f'{size} and {image_shape}')
    self._size = int(size)
    self._shape = (*map(int, image_shape), 3)
    self._seed = seed
    self._colours = np.random.default_rng([seed, 0]).uniform(48, 208, (NUM_CLASSES, 3))

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._size:
      raise IndexError(index)
    rng = np.random.default_rng([self._seed, 1, index])
    label = int(rng.integers(NUM_CLASSES))
    noise = rng.integers(-48, 49, self._shape)
    image = np.clip(self._colours[label] + noise, 0, 255).astype(np.uint8)
    return {'image': image, 'label': label}


# ---------------------------------------------------------------- image transforms


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
  """(left, top, crop_width, crop_height) as torchvision's RandomResizedCrop draws it.

  Up to 10 tries of an area fraction in `scale` and a log-uniform aspect in `ratio`;
  then the whole image, cut centrally to the nearest allowed aspect.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_width = int(round(math.sqrt(target_area * aspect)))
    crop_height = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return left, top, crop_width, crop_height
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_width, crop_height = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    crop_width, crop_height = int(round(height * max(ratio))), height
  else:
    crop_width, crop_height = width, height
  return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def open_image(image) -> Image.Image:
  """A (lazy, for encoded bytes) PIL image from JPEG/PNG bytes, a uint8 array or a PIL image."""
  if isinstance(image, (bytes, np.bytes_)):
    return Image.open(io.BytesIO(image))
  if isinstance(image, Image.Image):
    return image
  array = np.asarray(image, np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def _rgb(image: Image.Image) -> Image.Image:
  return image if image.mode == 'RGB' else image.convert('RGB')


def decode_for_crop(picture: Image.Image, box: tuple[int, int, int, int],
                    image_size: int) -> tuple[Image.Image, tuple[float, float, float, float]]:
  """`picture` (as `open_image` gives it) decoded, in RGB, and `box` (left, top, right,
  bottom) on the decoded image.

  A JPEG is decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`, libjpeg's DCT scaling) when
  the crop is shrunk by at least that much anyway: the draft keeps >= image_size pixels
  across the crop, so the resize still only shrinks.
  """
  if picture.format == 'JPEG':
    width, height = picture.size
    crop_width, crop_height = box[2] - box[0], box[3] - box[1]
    picture.draft('RGB', (math.ceil(width * image_size / crop_width),
                          math.ceil(height * image_size / crop_height)))
    scale_x, scale_y = picture.size[0] / width, picture.size[1] / height
    box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
  return _rgb(picture), box


def _filter(interpolation: str):
  if interpolation not in INTERPOLATIONS:
    raise UserError(f'unknown interpolation {interpolation!r}; valid: '
                    f'{", ".join(INTERPOLATIONS)}')
  return INTERPOLATIONS[interpolation]


def crop_resize(picture: Image.Image, box, image_size: int,
                interpolation: str = 'bilinear') -> Image.Image:
  """The box resized to image_size x image_size, bilinear or bicubic with antialiasing.

  Bilinear resizes the box in place (Pillow's `box`: its filter also reads the pixels just
  outside the box, so the crop's outer ~1 px differs slightly from torchvision's crop then
  resize). Bicubic, the new DeiT path, crops whole-pixel boxes first, as timm's
  RandomResizedCropAndInterpolation does (the same pixels); a box made fractional by a
  reduced JPEG decode is resized in place.
  """
  size, resample = (image_size, image_size), _filter(interpolation)
  if resample != Image.BILINEAR and all(float(v).is_integer() for v in box):
    return picture.crop(tuple(int(v) for v in box)).resize(size, resample)
  return picture.resize(size, resample, box=box)


def rand_augment(train_augment: str, interpolation: str = 'bilinear',
                 mean=IMAGENET_MEAN) -> pil_rand_augment.RandAugment | None:
  """The RandAugment of `train_augment` (None for 'crop_flip'), set up as timm's
  create_transform does: fill = the mean in 0..255, the crop's interpolation."""
  if train_augment == CROP_FLIP:
    return None
  if not str(train_augment).startswith('rand'):
    raise UserError(f'unknown train_augment {train_augment!r}; valid: {CROP_FLIP!r} or a timm '
                    'RandAugment policy such as "rand-m9-mstd0.5-inc1"')
  hparams = dict(img_mean=pil_rand_augment.fill_from_mean(mean),
                 interpolation=interpolation)
  return pil_rand_augment.rand_augment_transform(train_augment, hparams)


def train_transform(image, rng: np.random.Generator, image_size: int = 224,
                    interpolation: str = 'bilinear',
                    augment: pil_rand_augment.RandAugment | None = None) -> np.ndarray:
  """Random resized crop to `image_size` + random flip (+ `augment`) -> uint8 [S, S, 3].

  The crop box is timm's RandomResizedCropAndInterpolation.get_params too (torchvision's
  algorithm); the crop, flip and RandAugment are timm's order.
  """
  picture = open_image(image)
  left, top, crop_width, crop_height = random_resized_crop_box(rng, *picture.size)
  picture, box = decode_for_crop(picture, (left, top, left + crop_width, top + crop_height),
                                 image_size)
  out = crop_resize(picture, box, image_size, interpolation)
  if rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  if augment is not None:
    out = augment(out, rng)
  return np.asarray(out, np.uint8)


def _resize_and_offsets(width: int, height: int, image_size: int) -> tuple[int, ...]:
  """torchvision's Resize(image_size / 0.875) size and CenterCrop offsets: (new width,
  new height, left, top)."""
  resize = int(round(image_size / EVAL_CROP_FRACTION))
  if width <= height:
    new_width, new_height = resize, int(resize * height / width)
  else:
    new_width, new_height = int(resize * width / height), resize
  top = int(round((new_height - image_size) / 2.0))
  left = int(round((new_width - image_size) / 2.0))
  return new_width, new_height, left, top


def center_crop_box(width: int, height: int, image_size: int) -> tuple[float, ...]:
  """The box of the source image that Resize(image_size / 0.875) + CenterCrop keeps.

  As torchvision: the shorter side resized to `resize` (the longer one truncated), then
  the central image_size square (offsets rounded); returned in source pixels (left, top,
  right, bottom), so resizing just that box gives the same pixels.
  """
  new_width, new_height, left, top = _resize_and_offsets(width, height, image_size)
  scale_x, scale_y = width / new_width, height / new_height
  return (left * scale_x, top * scale_y, min(width, (left + image_size) * scale_x),
          min(height, (top + image_size) * scale_y))  # min: float rounding past the edge


def eval_transform(image, image_size: int = 224, interpolation: str = 'bilinear') -> np.ndarray:
  """torchvision Resize(image_size / 0.875) (shorter side, bilinear or bicubic) + CenterCrop.

  Bilinear resizes only the kept box (Pillow's resize with `box` samples and filters
  exactly as the whole-image resize does, pixels outside the box included), which saves
  the resize of the cropped-off margins: the same pixels, up to float rounding (+-1).
  Bicubic resizes the whole image, then crops: Pillow 13 may run a box resize's two passes
  in the other order, and bicubic's overshoot, clipped to 0..255 between the passes, then
  moves some pixels of noisy images by up to ~20 levels.
  """
  picture = eval_resize(_rgb(open_image(image)), image_size, interpolation)
  return np.asarray(picture, np.uint8)


def eval_resize(picture: Image.Image, image_size: int,
                interpolation: str = 'bilinear') -> Image.Image:
  """eval_transform on a decoded RGB picture, as a PIL image."""
  if _filter(interpolation) == Image.BILINEAR:
    box = center_crop_box(*picture.size, image_size)
    return crop_resize(picture, box, image_size, interpolation)
  new_width, new_height, left, top = _resize_and_offsets(*picture.size, image_size)
  resized = picture.resize((new_width, new_height), _filter(interpolation))
  return resized.crop((left, top, left + image_size, top + image_size))


# ---------------------------------------------------------------- order (which example where)


def _host_slice(global_batch_size: int, process_index: int | None,
                process_count: int | None) -> tuple[int, int, int]:
  """(process_index, process_count, per-host batch), defaulting to jax's processes."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise UserError(f'process_index={process_index} is not in [0, {process_count})')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise UserError(f'global batch_size={global_batch_size} must be a positive multiple of '
                    f'the number of hosts ({process_count})')
  return process_index, process_count, global_batch_size // process_count


class _TrainOrder(abc.Sequence):
  """Host element k -> {'index': record, 'epoch', 'position' in the epoch's order}."""

  def __init__(self, num_records, global_batch_size, process_index, process_count, seed,
               num_epochs):
    self._num_records = num_records
    self._global_batch = global_batch_size
    self._local_batch = global_batch_size // process_count
    self._offset = process_index * self._local_batch
    self._steps = steps_per_epoch(num_records, global_batch_size)
    self._seed = seed
    self._length = num_epochs * self._steps * self._local_batch
    self._lock = threading.Lock()
    self._permutations = collections.OrderedDict()

  def __getstate__(self):  # For grain's worker processes: no lock, no cache.
    state = dict(self.__dict__)
    del state['_lock'], state['_permutations']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._permutations = collections.OrderedDict()

  def __len__(self) -> int:
    return self._length

  def _permutation(self, epoch: int) -> np.ndarray:
    """The epoch's order of all records: a function of (seed, epoch) only."""
    with self._lock:
      permutation = self._permutations.get(epoch)
      if permutation is None:
        rng = np.random.default_rng([self._seed, _ORDER_STREAM, epoch])
        permutation = rng.permutation(self._num_records)
        self._permutations[epoch] = permutation
        while len(self._permutations) > 2:
          self._permutations.popitem(last=False)
      return permutation

  def __getitem__(self, k: int) -> dict:
    if not 0 <= k < self._length:
      raise IndexError(k)
    step, offset = divmod(k, self._local_batch)
    epoch, step_in_epoch = divmod(step, self._steps)
    position = step_in_epoch * self._global_batch + self._offset + offset
    return {'index': int(self._permutation(epoch)[position]), 'epoch': epoch,
            'position': position}


class _EvalOrder(abc.Sequence):
  """Host element k -> {'index': record or -1 (padding)}; every host gets as many."""

  def __init__(self, num_records, global_batch_size, process_index, process_count):
    self._num_records = num_records
    self._global_batch = global_batch_size
    self._local_batch = global_batch_size // process_count
    self._offset = process_index * self._local_batch
    self._length = num_eval_batches(num_records, global_batch_size) * self._local_batch

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, k: int) -> dict:
    if not 0 <= k < self._length:
      raise IndexError(k)
    batch, offset = divmod(k, self._local_batch)
    position = batch * self._global_batch + self._offset + offset
    return {'index': position if position < self._num_records else -1}


# ---------------------------------------------------------------- grain stages


# What a host pipeline does with an image it cannot read or decode (config.data.bad_images):
# stop the run naming the file, or skip it (counted, each file named once in the log).
BAD_IMAGES = ('stop', 'skip')
# What Pillow raises on a truncated, damaged or non-image file (UnidentifiedImageError and
# "image file is truncated" are OSErrors); a file that vanished is an OSError too.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error,
                 Image.DecompressionBombError)
NOT_BAD = -1  # 'bad' of an element whose own image was used


def _read(source, index: int) -> dict:
  """Record `index`; a file that cannot be read gives empty bytes (which fail to decode)."""
  try:
    example = source[index]
  except OSError:
    return {'image': b'', 'label': 0}
  return {'image': example['image'], 'label': int(example['label'])}


def record_name(records, index: int) -> str:
  """The file behind record `index` for messages: its path (image folders), its TFDS
  'file_name', else its index."""
  name = getattr(records, 'name', None)
  if name:
    return name(index)
  try:
    file_name = records[index].get('file_name')
  except (OSError, AttributeError, KeyError):
    file_name = None
  if isinstance(file_name, (bytes, np.bytes_)):
    file_name = file_name.decode('utf-8', 'replace')
  return f'{file_name} (record {index})' if file_name else f'record {index}'


class _Read(grain.transforms.Map):
  """Fetches the record named by 'index' (none for eval padding, index -1)."""

  def __init__(self, source):
    self._source = source

  def map(self, element: dict) -> dict:
    if element['index'] < 0:
      return {**element, 'image': None, 'label': 0}
    return {**element, **_read(self._source, element['index'])}


class _TrainAugment(grain.transforms.Map):
  """Decode + random resized crop + flip (+ RandAugment), keyed by (seed, epoch, position).

  An image that does not decode is marked in 'bad' (its record index). With
  bad_images='skip' the example is replaced by the next record that decodes (index + 1,
  + 2, ...), augmented with the same key: batches keep their shape and stay a function of
  (seed, epoch, position), so a resumed run sees the same ones. With 'stop' it becomes a
  black image for the host to refuse (kd_jax.data.feeders raises, naming the file).
  """

  def __init__(self, image_size: int, seed: int, interpolation: str = 'bilinear',
               augment: pil_rand_augment.RandAugment | None = None, records=None,
               bad_images: str = 'stop'):
    self._image_size = image_size
    self._seed = seed
    self._interpolation = interpolation
    self._augment = augment
    self._records = records
    self._skip = bad_images == 'skip'

  def _transform(self, image, element):
    rng = np.random.default_rng(
        [self._seed, _AUGMENT_STREAM, element['epoch'], element['position']])
    return train_transform(image, rng, self._image_size, self._interpolation, self._augment)

  def map(self, element: dict) -> dict:
    index, label = element['index'], element['label']
    try:
      return {'image': self._transform(element['image'], element), 'label': np.int32(label),
              'index': np.int32(index), 'bad': np.int32(NOT_BAD)}
    except DECODE_ERRORS:
      pass
    count = len(self._records)
    for step in range(1, count if self._skip else 1):
      substitute = _read(self._records, (index + step) % count)
      try:
        image = self._transform(substitute['image'], element)
      except DECODE_ERRORS:
        continue
      return {'image': image, 'label': np.int32(substitute['label']),
              'index': np.int32((index + step) % count), 'bad': np.int32(index)}
    size = self._image_size
    return {'image': np.zeros((size, size, 3), np.uint8), 'label': np.int32(label),
            'index': np.int32(index), 'bad': np.int32(index)}


class _EvalPreprocess(grain.transforms.Map):
  """Decode + resize + center crop; padding becomes a zero image with mask False, and so
  does an image that does not decode (marked in 'bad', for the host to skip or refuse)."""

  def __init__(self, image_size: int, interpolation: str = 'bilinear'):
    self._image_size = image_size
    self._interpolation = interpolation

  def map(self, element: dict) -> dict:
    valid, bad = element['image'] is not None, NOT_BAD
    size = self._image_size
    image = np.zeros((size, size, 3), np.uint8)
    if valid:
      try:
        image = eval_transform(element['image'], size, self._interpolation)
      except DECODE_ERRORS:
        valid, bad = False, element['index']
    return {'image': image, 'label': np.int32(element['label']),
            'index': np.int32(element['index']), 'mask': np.bool_(valid), 'bad': np.int32(bad)}


def _read_options(num_threads: int) -> grain.ReadOptions:
  """`num_threads` batches in flight: each thread assembles whole batches."""
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads)


def _check_parallelism(num_threads: int, worker_count: int):
  if num_threads < 0:
    raise UserError(f'data loader num_threads must be >= 0 (0: one per usable core), got '
                    f'{num_threads}')
  if worker_count < parallelism.AUTO_WORKERS:
    raise UserError(f'data loader worker_count must be >= -1 (-1: chosen from the host), '
                    f'got {worker_count}')


def host_parallelism(num_threads: int = parallelism.AUTO_THREADS,
                     worker_count: int = parallelism.AUTO_WORKERS) -> tuple[int, int]:
  """(threads per process, worker processes) the pipeline runs with on this host.

  Auto (0 threads / -1 workers): kd_jax.data.parallelism.resolve from the usable cores.
  Worker processes need parsed absl flags (grain reads them); where auto would choose
  them but the flags are not parsed (outside absl.app), one process runs the threads.
  """
  _check_parallelism(num_threads, worker_count)
  threads, workers = parallelism.resolve(num_threads, worker_count)
  if worker_count == parallelism.AUTO_WORKERS and workers and not flags.FLAGS.is_parsed():
    cores = min(parallelism.usable_cores(), parallelism.MAX_THREADS_PER_PROCESS)
    threads, workers = parallelism.resolve(num_threads, 0, cores=cores)
  return threads, workers


def _iter_dataset(batches: grain.MapDataset, num_threads: int,
                  worker_count: int) -> grain.IterDataset:
  num_threads, worker_count = host_parallelism(num_threads, worker_count)
  dataset = batches.to_iter_dataset(_read_options(num_threads))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      raise UserError('data loader worker_count > 0 needs parsed absl flags (grain reads them '
                      'to start its workers): run under absl.app, or call '
                      'absl.flags.FLAGS.mark_as_parsed() first')
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return dataset


# ---------------------------------------------------------------- train


class TrainIterator(grain.DatasetIterator):
  """This host's training batches {'image' uint8 [L,S,S,3], 'label', 'index', 'bad' int32
  [L]} ('bad': the record whose image did not decode, NOT_BAD when none).

  A grain DatasetIterator (works with grain's Orbax checkpoint handler). Its state is
  {'next_batch': k} plus the settings it depends on, JSON-able; `set_state` continues at
  batch k exactly. Batch k of the run is the same whatever the number of hosts, threads
  or worker processes, so a run may resume with different ones.
  """

  def __init__(self, batches: grain.MapDataset, *, num_threads: int, worker_count: int,
               settings: dict[str, Any], steps_per_epoch: int, num_examples: int):
    super().__init__()
    self._batches = batches
    self._num_threads = num_threads
    self._worker_count = worker_count
    self._settings = settings
    self.steps_per_epoch = steps_per_epoch
    self.num_examples = num_examples
    self._next_batch = 0
    self._iterator = None

  def _start(self):
    dataset = _iter_dataset(self._batches[self._next_batch:], self._num_threads,
                            self._worker_count)
    self._iterator = iter(dataset)

  def __next__(self) -> dict:
    if self._closed:
      raise ValueError('the ImageNet train iterator is closed')
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    self._next_batch += 1
    return batch

  @property
  def epoch(self) -> int:
    """The epoch the next batch belongs to."""
    return self._next_batch // self.steps_per_epoch

  def get_state(self) -> dict[str, Any]:
    return {'next_batch': self._next_batch, **self._settings}

  def set_state(self, state: dict[str, Any]) -> None:
    changed = {k: (state[k], v) for k, v in self._settings.items()
               if k in state and state[k] != v}
    if changed:
      what = ', '.join(f'{k}={old} (now {new})' for k, (old, new) in changed.items())
      raise UserError(f'the saved data position is from a run with {what}; resume with the '
                      'same data settings')
    next_batch = int(state['next_batch'])
    if not 0 <= next_batch <= len(self._batches):
      raise UserError(f'saved data position {next_batch} is outside this run\'s '
                      f'{len(self._batches)} batches')
    self._stop()
    self._next_batch = next_batch

  def start_prefetch(self) -> None:
    if self._iterator is None:
      self._start()
    self._iterator.start_prefetch()

  def _stop(self):
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def close(self) -> None:
    self._stop()
    super().close()


def make_train_iterator(global_batch_size: int, *, seed: int, records=None, source: str = 'tfds',
                        data_dir: str | None = None, image_size: int = 224,
                        num_epochs: int | None = None, process_index: int | None = None,
                        process_count: int | None = None,
                        num_threads: int = parallelism.AUTO_THREADS,
                        worker_count: int = parallelism.AUTO_WORKERS, synthetic_size: int | None = None,
                        synthetic_image_shape: tuple[int, int] = (64, 64),
                        train_augment: str = CROP_FLIP, interpolation: str = 'bilinear',
                        mean=IMAGENET_MEAN, bad_images: str = 'stop') -> TrainIterator:
  """This host's training batches of global_batch_size / process_count examples.

  Epoch e is a permutation of the train split drawn from (seed, e), cut into
  `steps_per_epoch` global batches (the remainder dropped); `num_epochs=None` repeats
  without end. Decoding runs on `num_threads` threads in each of `worker_count` worker
  processes (0: in this process); by default both follow the host's usable cores
  (`host_parallelism`). Process index/count default to jax's. `records` (a
  random-access sequence of {'image', 'label'}) replaces the ImageNet split of `source`,
  so any such dataset (e.g. kd_jax.data.image_folder) runs through this pipeline.
  `train_augment` / `interpolation`: see the module docstring; `mean` (the normalisation
  mean, 0..1) gives RandAugment's fill colour, as in timm. `bad_images` (BAD_IMAGES): an
  image that does not decode is marked in the batch's 'bad' and, with 'skip', replaced by
  the next record that decodes (see _TrainAugment).
  """
  if seed < 0:
    raise UserError(f'data seed must be >= 0, got {seed}')
  if num_epochs is not None and num_epochs < 1:
    raise UserError(f'num_epochs must be >= 1, got {num_epochs}')
  if image_size < 1:
    raise UserError(f'image_size must be >= 1, got {image_size}')
  _check_parallelism(num_threads, worker_count)
  _filter(interpolation)
  augment = rand_augment(train_augment, interpolation, mean)
  process_index, process_count, local_batch = _host_slice(
      global_batch_size, process_index, process_count)
  if records is None:
    records = open_split('train', source, data_dir, synthetic_size=synthetic_size,
                         synthetic_image_shape=synthetic_image_shape)
  order = _TrainOrder(len(records), global_batch_size, process_index, process_count, seed,
                      num_epochs or _FOREVER_EPOCHS)
  batches = (grain.MapDataset.source(order)
             .map(_Read(records))
             .map(_TrainAugment(image_size, seed, interpolation, augment, records, bad_images))
             .batch(local_batch, drop_remainder=True))
  settings = {'seed': seed, 'global_batch_size': global_batch_size,
              'num_examples': len(records), 'image_size': image_size,
              'train_augment': train_augment, 'interpolation': interpolation}
  return TrainIterator(batches, num_threads=num_threads, worker_count=worker_count,
                       settings=settings,
                       steps_per_epoch=steps_per_epoch(len(records), global_batch_size),
                       num_examples=len(records))


# ---------------------------------------------------------------- eval


class EvalBatches:
  """Re-iterable eval batches {'image', 'label', 'index' (-1: padding), 'mask', 'bad'} of
  one host ('bad' as in TrainIterator; such an example has mask False).

  Every example of the split is in exactly one batch of one host, once; all hosts run
  `len()` batches of the same shape, the last ones padded with mask False.
  """

  def __init__(self, batches: grain.MapDataset, num_threads: int, worker_count: int,
               num_examples: int):
    self._batches = batches
    self._num_threads = num_threads
    self._worker_count = worker_count
    self.num_examples = num_examples

  def __len__(self) -> int:
    return len(self._batches)

  def __iter__(self):
    return iter(_iter_dataset(self._batches, self._num_threads, self._worker_count))


def make_eval_batches(global_batch_size: int, *, records=None, source: str = 'tfds',
                      data_dir: str | None = None, split: str = 'validation',
                      image_size: int = 224, process_index: int | None = None,
                      process_count: int | None = None,
                      num_threads: int = parallelism.AUTO_THREADS,
                      worker_count: int = parallelism.AUTO_WORKERS, synthetic_size: int | None = None,
                      synthetic_image_shape: tuple[int, int] = (64, 64),
                      interpolation: str = 'bilinear') -> EvalBatches:
  """This host's share of `split` (or of `records`), in order, padded to whole global batches."""
  if image_size < 1:
    raise UserError(f'image_size must be >= 1, got {image_size}')
  _check_parallelism(num_threads, worker_count)
  _filter(interpolation)
  process_index, process_count, local_batch = _host_slice(
      global_batch_size, process_index, process_count)
  if records is None:
    records = open_split(split, source, data_dir, synthetic_size=synthetic_size,
                         synthetic_image_shape=synthetic_image_shape)
  order = _EvalOrder(len(records), global_batch_size, process_index, process_count)
  batches = (grain.MapDataset.source(order)
             .map(_Read(records))
             .map(_EvalPreprocess(image_size, interpolation))
             .batch(local_batch))
  return EvalBatches(batches, num_threads, worker_count, len(records))
