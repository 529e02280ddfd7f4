"""A dataset of image files, one folder per class (torchvision's ImageFolder layout).

  <data_dir>/train/<class>/*.jpg|jpeg|png|...      <data_dir>/val/<class>/...

Any resolution: the host pipeline of kd_jax/data/imagenet.py decodes, random-resized-
crops (train) or resizes + center-crops (eval) to `config.data.image_size`. Class k is
the k-th class folder of the training split in sorted order; the test split may lack
classes but not add any. Tiny-ImageNet's val/ keeps its labels in a text file: move its
images into val/<wnid>/ first (one folder per class, as train/ is).

The scan reads the first bytes of every file: an empty file or one that is no image
format (an HTML error page saved as .jpg) stops the run naming it, or with
`bad_images='skip'` is left out (named in the log). Damage further in (a truncated JPEG)
shows when the file is decoded (kd_jax.data.imagenet, the same policy).
"""
from collections import abc
from concurrent import futures
import dataclasses
import os

from absl import logging

from kd_jax.errors import UserError

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
# The first bytes of each format Pillow reads for these extensions. Pillow decodes by
# content, not name (ImageNet has PNGs named .JPEG): any of them is accepted for any name.
MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM', b'II*\x00',
         b'MM\x00*')


class Files(abc.Sequence):
  """Random-access records {'image': the file's bytes, 'label'} of one split."""

  def __init__(self, paths, labels):
    self._paths, self._labels = tuple(paths), tuple(labels)

  def __len__(self):
    return len(self._paths)

  def __getitem__(self, index):
    with open(self._paths[index], 'rb') as f:
      return {'image': f.read(), 'label': self._labels[index]}

  def name(self, index):
    """The path of record `index` (for messages about it)."""
    return self._paths[index]


def header_problem(path):
  """Why the file at `path` is not an image (from its first bytes), or None."""
  try:
    with open(path, 'rb') as f:
      head = f.read(12)
  except OSError as error:
    return f'cannot be read: {error.strerror}'
  if not head:
    return 'empty file'
  if head.startswith(MAGIC) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP'):
    return None
  return f'not an image file (it starts with {head[:8]!r})'


def _check_headers(paths, labels, bad_images):
  """(paths, labels) without the files that are no image; 'stop': UserError naming one."""
  with futures.ThreadPoolExecutor(16) as pool:  # file opens: I/O bound
    problems = list(pool.map(header_problem, paths))
  bad = [(path, why) for path, why in zip(paths, problems) if why]
  if bad and bad_images != 'skip':
    more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
    raise UserError(f'{bad[0][0]}: {bad[0][1]}{more}; replace or remove it, or set '
                    "config.data.bad_images='skip' to leave such files out")
  for path, why in bad:
    logging.warning('skipped image %s: %s', path, why)
  keep = [why is None for why in problems]
  return ([p for p, k in zip(paths, keep) if k], [l for l, k in zip(labels, keep) if k],
          [path for path, _ in bad])


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Files
  test: Files
  classes: tuple[str, ...]
  skipped: tuple[str, ...] = ()  # files left out by the scan (bad_images='skip')

  @property
  def num_classes(self):
    return len(self.classes)


def _layout(data_dir):
  return (f'{data_dir}/<split>/<class>/<image files>, one folder per class '
          '(config.data.data_dir, .train_split, .test_split)')


def _scan(root, classes=None):
  """(paths, labels) of the image files under root/<class>/, classes in sorted order."""
  found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
  classes = tuple(found) if classes is None else classes
  unknown = sorted(set(found) - set(classes))
  if unknown:
    raise UserError(f'{root} has class folders the training split lacks: '
                    f'{", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""}')
  paths, labels = [], []
  for name in found:
    folder = os.path.join(root, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))
    paths += [os.path.join(folder, f) for f in files]
    labels += [classes.index(name)] * len(files)
  return paths, labels, classes


def load(data_dir, train_split='train', test_split='val', bad_images='stop') -> Splits:
  """Both splits of the image folder at `data_dir`; one-line errors if it is not one.
  Files that are no image: see the module docstring."""
  if not data_dir:
    raise UserError(f'config.data.data_dir is not set: point it at {_layout("DIR")}')
  data_dir = os.path.expanduser(data_dir)
  roots = [os.path.join(data_dir, split) for split in (train_split, test_split)]
  for root in roots:
    if not os.path.isdir(root):
      raise UserError(f'{root} not found: expected {_layout(data_dir)}')
  train_paths, train_labels, classes = _scan(roots[0])
  test_paths, test_labels, _ = _scan(roots[1], classes)
  train_paths, train_labels, train_bad = _check_headers(train_paths, train_labels, bad_images)
  test_paths, test_labels, test_bad = _check_headers(test_paths, test_labels, bad_images)
  for root, paths in zip(roots, (train_paths, test_paths)):
    if not paths:
      raise UserError(f'no image files ({", ".join(EXTENSIONS)}) under {root}/<class>/: '
                      f'expected {_layout(data_dir)}')
  if len(classes) < 2:
    raise UserError(f'{roots[0]} has {len(classes)} class folder(s); a classifier needs two '
                    'or more')
  return Splits(Files(train_paths, train_labels), Files(test_paths, test_labels), classes,
                tuple(train_bad + test_bad))
