"""A dataset of image files, one folder per class (torchvision's ImageFolder layout).

  <data_dir>/train/<class>/*.jpg|jpeg|png|...      <data_dir>/val/<class>/...

Any resolution: the host pipeline of kd_jax/data/imagenet.py decodes, random-resized-
crops (train) or resizes + center-crops (eval) to `config.data.image_size`. Class k is
the k-th class folder of the training split in sorted order; the test split may lack
classes but not add any. Tiny-ImageNet's val/ keeps its labels in a text file: move its
images into val/<wnid>/ first (one folder per class, as train/ is).
"""
from collections import abc
import dataclasses
import os

from kd_jax.errors import UserError

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


class Files(abc.Sequence):
  """Random-access records {'image': the file's bytes, 'label'} of one split."""

  def __init__(self, paths, labels):
    self._paths, self._labels = tuple(paths), tuple(labels)

  def __len__(self):
    return len(self._paths)

  def __getitem__(self, index):
    with open(self._paths[index], 'rb') as f:
      return {'image': f.read(), 'label': self._labels[index]}


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Files
  test: Files
  classes: tuple[str, ...]

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


def load(data_dir, train_split='train', test_split='val') -> Splits:
  """Both splits of the image folder at `data_dir`; one-line errors if it is not one."""
  if not data_dir:
    raise UserError(f'config.data.data_dir is not set: point it at {_layout("DIR")}')
  data_dir = os.path.expanduser(data_dir)
  roots = [os.path.join(data_dir, split) for split in (train_split, test_split)]
  for root in roots:
    if not os.path.isdir(root):
      raise UserError(f'{root} not found: expected {_layout(data_dir)}')
  train_paths, train_labels, classes = _scan(roots[0])
  test_paths, test_labels, _ = _scan(roots[1], classes)
  for root, paths in zip(roots, (train_paths, test_paths)):
    if not paths:
      raise UserError(f'no image files ({", ".join(EXTENSIONS)}) under {root}/<class>/: '
                      f'expected {_layout(data_dir)}')
  if len(classes) < 2:
    raise UserError(f'{roots[0]} has {len(classes)} class folder(s); a classifier needs two '
                    'or more')
  return Splits(Files(train_paths, train_labels), Files(test_paths, test_labels), classes)
