"""detectron2's detection input transforms on the host, and the padding buckets.

Train: ResizeShortestEdge(short_edge_length=(640, 672, ..., 800), max_size=1333,
sample_style='choice') then RandomFlip(horizontal, p 0.5); test: ResizeShortestEdge(800,
1333) (detectron2/data/detection_utils.py build_augmentation, the Base-RCNN-FPN inputs).
The image is resized by Pillow, bilinear, as detectron2's ResizeTransform.apply_image does
for uint8 images; boxes follow Transform.apply_box (corners mapped, then min/max), are
clipped to the image (transform_instance_annotations) and empty ones dropped
(filter_empty_instances, threshold 1e-5), crowd boxes first (DatasetMapper).

Batches are padded to one of a few fixed (H, W) buckets (multiples of 32, detectron2's
size_divisibility for FPN), so the step compiles once per bucket. detectron2 pads each
batch to its own largest image rounded up to 32; here each batch takes the smallest
bucket that holds all its images, the buckets being, per orientation, every
(short edge, max_size) pair rounded up to 32: with 'choice' short edges every batch whose
images share an orientation (aspect-ratio grouping, kd_jax/data/detection_pipeline.py)
gets the size detectron2 would give its tallest image, or one 32-step bigger.
"""
import numpy as np
from PIL import Image, ImageOps

from kd_jax.data import imagenet
from kd_jax.errors import UserError

MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
MAX_SIZE_TRAIN = 1333
MIN_SIZE_TEST = 800
MAX_SIZE_TEST = 1333
SIZE_DIVISIBILITY = 32
EMPTY_BOX_THRESHOLD = 1e-5


def output_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
  """(new height, new width): detectron2's ResizeShortestEdge.get_output_shape."""
  size = short_edge * 1.0
  scale = size / min(height, width)
  if height < width:
    new_height, new_width = size, scale * width
  else:
    new_height, new_width = scale * height, size
  if max(new_height, new_width) > max_size:
    scale = max_size * 1.0 / max(new_height, new_width)
    new_height = new_height * scale
    new_width = new_width * scale
  return int(new_height + 0.5), int(new_width + 0.5)


def round_up(size: int, multiple: int = SIZE_DIVISIBILITY) -> int:
  return -(-int(size) // multiple) * multiple


def landscape(height, width):
  """detectron2's AspectRatioGroupedDataset bucket: 0 if w > h, else 1 (square: 1)."""
  return width > height


def default_buckets(short_edges, max_size) -> tuple[tuple[int, int], ...]:
  """Per orientation, each short edge with max_size, rounded up to 32: every image
  resized with one of `short_edges` fits the bucket of its orientation and short edge."""
  long_edge = round_up(max_size)
  landscape_buckets = [(round_up(s), long_edge) for s in sorted(set(short_edges))]
  return tuple(landscape_buckets + [(w, h) for h, w in landscape_buckets])


def check_buckets(buckets):
  """Buckets as sorted (H, W) tuples of positive multiples of 32."""
  try:
    buckets = tuple(sorted({(int(h), int(w)) for h, w in buckets}, key=lambda b: (b[0] * b[1], b)))
  except (TypeError, ValueError):
    raise UserError(f'input size buckets must be (height, width) pairs, got {buckets!r}') from None
  bad = [b for b in buckets if min(b) < 1 or b[0] % SIZE_DIVISIBILITY or b[1] % SIZE_DIVISIBILITY]
  if not buckets or bad:
    raise UserError(f'input size buckets must be positive multiples of {SIZE_DIVISIBILITY}, '
                    f'got {bad or "none"}')
  return buckets


def choose_bucket(sizes, buckets) -> tuple[int, int] | None:
  """The smallest bucket (by area, `buckets` sorted so) holding every (h, w) in `sizes`;
  None if none does."""
  height, width = np.max(np.asarray(sizes).reshape(-1, 2), axis=0)
  for bucket in buckets:
    if bucket[0] >= height and bucket[1] >= width:
      return bucket
  return None


def read_rgb(image) -> Image.Image:
  """Decoded RGB picture as detectron2's read_image (EXIF orientation applied)."""
  picture = imagenet.open_image(image)
  if isinstance(image, (bytes, np.bytes_)):
    picture = ImageOps.exif_transpose(picture)
  return picture if picture.mode == 'RGB' else picture.convert('RGB')


def resize(picture: Image.Image, new_hw) -> np.ndarray:
  """ResizeTransform.apply_image for uint8: Pillow bilinear to (new_h, new_w)."""
  new_height, new_width = new_hw
  if picture.size == (new_width, new_height):
    return np.asarray(picture, np.uint8)
  return np.asarray(picture.resize((new_width, new_height), Image.BILINEAR), np.uint8)


def transform_boxes(boxes, hw, new_hw, flip: bool):
  """(float32 [n, 4] boxes, bool [n] non-empty) after resize (+ horizontal flip).

  apply_box in float64 as detectron2 (corners through ResizeTransform / HFlipTransform
  apply_coords, then min/max), clip to the resized image, then float32 (Boxes) and
  Boxes.nonempty(1e-5).
  """
  (height, width), (new_height, new_width) = hw, new_hw
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 4, 2)
  corners = corners * np.array([new_width * 1.0 / width, new_height * 1.0 / height])
  if flip:
    corners[..., 0] = new_width - corners[..., 0]
  boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).clip(min=0)
  boxes = np.minimum(boxes, [new_width, new_height, new_width, new_height]).astype(np.float32)
  keep = ((boxes[:, 2] - boxes[:, 0]) > EMPTY_BOX_THRESHOLD) & (
      (boxes[:, 3] - boxes[:, 1]) > EMPTY_BOX_THRESHOLD)
  return boxes, keep


def pad_image(image: np.ndarray, bucket) -> np.ndarray:
  """`image` at the top left of a zero uint8 [H, W, 3] of the bucket's size.

  detectron2 pads the *normalised* image with 0 (ImageList.from_tensors): the model must
  zero the padding after normalising, using `image_hw`.
  """
  out = np.zeros((*bucket, 3), np.uint8)
  out[:image.shape[0], :image.shape[1]] = image
  return out


def pad_boxes(boxes, classes, max_boxes: int):
  """(boxes [G, 4], classes [G], valid [G]) padded with zeros / False to G = max_boxes."""
  count = len(boxes)
  if count > max_boxes:
    raise UserError(f'an image has {count} boxes, more than max_boxes={max_boxes}')
  padded_boxes = np.zeros((max_boxes, 4), np.float32)
  padded_classes = np.zeros((max_boxes,), np.int32)
  padded_boxes[:count], padded_classes[:count] = boxes, classes
  return padded_boxes, padded_classes, np.arange(max_boxes) < count
