"""A synthetic detection dataset in COCO's folder layout: shapes on noise, for tests and smoke.

Each image (random size and orientation) holds 1..max_objects filled shapes of random
colour and size on uniform noise; the shape's kind is its class: rectangle, ellipse,
triangle (category ids 1, 3, 7: not contiguous, as COCO's are not). Every
`empty_every`-th image has none (training skips those, as it skips COCO's). Boxes are
each shape's exact pixel extent, xywh; area its pixel count; written as
  <root>/annotations/instances_{train,val}2017.json + <root>/{train,val}2017/*.png|jpg
so kd_jax.data.coco.load_folder reads it like COCO.
"""
import json
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

from kd_jax.data import coco
from kd_jax.errors import UserError

CLASSES = ('rectangle', 'ellipse', 'triangle')
CATEGORY_IDS = (1, 3, 7)


def _draw_shape(kind, size, box):
  """A bool mask [h, w] of one filled shape inside the xyxy box (inclusive pixels)."""
  mask = Image.new('1', (size[1], size[0]))
  draw = ImageDraw.Draw(mask)
  x1, y1, x2, y2 = box
  if kind == 'rectangle':
    draw.rectangle(box, fill=1)
  elif kind == 'ellipse':
    draw.ellipse(box, fill=1)
  else:
    draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) // 2, y1)], fill=1)
  return np.asarray(mask, bool)


def make_image(rng: np.random.Generator, size, max_objects: int, empty: bool):
  """(uint8 [h, w, 3] image, [(class, xywh, area)]) of one synthetic image."""
  height, width = size
  image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
  objects = []
  for _ in range(0 if empty else int(rng.integers(1, max_objects + 1))):
    label = int(rng.integers(len(CLASSES)))
    box_w = int(rng.integers(max(4, width // 6), max(5, width // 2)))
    box_h = int(rng.integers(max(4, height // 6), max(5, height // 2)))
    x1, y1 = int(rng.integers(0, width - box_w)), int(rng.integers(0, height - box_h))
    mask = _draw_shape(CLASSES[label], size, (x1, y1, x1 + box_w - 1, y1 + box_h - 1))
    image[mask] = rng.integers(0, 256, 3)
    rows, cols = np.nonzero(mask)
    if not len(rows):
      continue
    xywh = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1),
            int(rows.max() - rows.min() + 1)]
    objects.append((label, xywh, int(mask.sum())))
  return image, objects


def ensure(root: str, **kwargs) -> str:
  """`root` holding the dataset: written (see `write`) unless already there. Written into
  a sibling folder and renamed, so concurrent writers (hosts, tests) never see half."""
  json_path, _ = coco.folder_paths(root, 'validation')
  if not os.path.isfile(json_path):
    staging = f'{root.rstrip(os.sep)}.{os.getpid()}.partial'
    write(staging, **kwargs)
    try:
      os.rename(staging, root)
    except OSError:  # another writer finished first (or root exists): use theirs
      shutil.rmtree(staging, ignore_errors=True)
      if not os.path.isfile(json_path):
        raise UserError(f'cannot write the shapes dataset to {root}: it exists and holds '
                        'no annotations/instances_val2017.json') from None
  return root


def write(root: str, num_train: int = 64, num_val: int = 16, sizes=(48, 96),
          max_objects: int = 3, empty_every: int = 8, image_format: str = 'png',
          seed: int = 0) -> str:
  """Writes the dataset under `root` (both splits); returns root.

  Image heights and widths are drawn in [sizes[0], sizes[1]]; later shapes may cover
  earlier ones (their boxes stay, as occluded COCO objects' do).
  """
  if image_format not in ('png', 'jpg'):
    raise UserError(f'shapes image_format must be png or jpg, got {image_format!r}')
  if min(sizes) < 16 or num_train < 1 or num_val < 1:
    raise UserError(f'shapes needs sizes >= 16 and >= 1 image per split, got sizes {sizes}, '
                    f'{num_train} train, {num_val} val')
  for split, count, stream in (('train', num_train, 0), ('validation', num_val, 1)):
    json_path, image_dir = coco.folder_paths(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
      rng = np.random.default_rng([seed, stream, index])
      size = tuple(int(s) for s in rng.integers(sizes[0], sizes[1] + 1, 2))
      empty = empty_every > 0 and index % empty_every == empty_every - 1
      image, objects = make_image(rng, size, max_objects, empty)
      image_id = 1000 * (stream + 1) + index  # ids not 0-based, as COCO's
      name = f'{image_id:012d}.{image_format}'
      Image.fromarray(image).save(os.path.join(image_dir, name),
                                  **({'quality': 95} if image_format == 'jpg' else {}))
      images.append({'id': image_id, 'file_name': name, 'height': size[0], 'width': size[1]})
      for label, xywh, area in objects:
        annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                            'category_id': CATEGORY_IDS[label], 'bbox': xywh, 'area': area,
                            'iscrowd': 0})
    categories = [{'id': c, 'name': n} for c, n in zip(CATEGORY_IDS, CLASSES)]
    with open(json_path, 'w', encoding='utf-8') as file:
      json.dump({'images': images, 'annotations': annotations, 'categories': categories}, file)
  return root
