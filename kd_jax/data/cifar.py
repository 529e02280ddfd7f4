"""CIFAR-10 / CIFAR-100 as whole-split NumPy arrays, ready to live on the device.

Three sources, one entry point (`load`):
  * folder: the python-pickle layout of the original archive (as torchvision keeps it),
    `cifar-10-batches-py/` or `cifar-100-python/`;
  * tfds: a TFDS copy prepared as array_record is read with `tfds.data_source`; otherwise
    TFDS' download manager fetches (or finds cached) the archive TFDS' cifar builder
    uses, checks its sha256 and it is parsed here with NumPy. Neither step needs
    TensorFlow (TFDS' own `download_and_prepare` of CIFAR does);
  * synthetic: small deterministic arrays whose labels are learnable, for smoke runs.

Images are uint8 NHWC [N, 32, 32, 3], labels int32 [N].
"""
import dataclasses
import os
import pickle
import socket
import tarfile
import urllib.parse

import numpy as np

from kd_jax.errors import UserError

SOURCES = ('auto', 'folder', 'tfds', 'synthetic')
IMAGE_SHAPE = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What differs between CIFAR-10 and CIFAR-100."""
  title: str
  tfds_name: str
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  pickle_dir: str
  pickle_train: tuple[str, ...]
  pickle_test: tuple[str, ...]
  pickle_label_key: str
  archive_url: str  # The archive TFDS' builder downloads, as in TFDS' checksum registry.
  archive_size: int
  archive_sha256: str
  binary_dir: str  # Its layout.
  binary_train: tuple[str, ...]
  binary_test: tuple[str, ...]
  binary_label_offset: int  # CIFAR-100 records are <coarse><fine><3072 pixels>.


_SPECS = {
    'cifar10': _Spec(
        title='CIFAR-10', tfds_name='cifar10', num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        pickle_dir='cifar-10-batches-py',
        pickle_train=tuple(f'data_batch_{i}' for i in range(1, 6)),
        pickle_test=('test_batch',), pickle_label_key='labels',
        archive_url='https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
        archive_size=170052171,
        archive_sha256='c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
        binary_dir='cifar-10-batches-bin',
        binary_train=tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
        binary_test=('test_batch.bin',), binary_label_offset=0),
    'cifar100': _Spec(
        title='CIFAR-100', tfds_name='cifar100', num_classes=100,
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),
        pickle_dir='cifar-100-python', pickle_train=('train',), pickle_test=('test',),
        pickle_label_key='fine_labels',
        archive_url='https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
        archive_size=168513733,
        archive_sha256='58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec',
        binary_dir='cifar-100-binary', binary_train=('train.bin',),
        binary_test=('test.bin',), binary_label_offset=1),
}
DATASETS = tuple(_SPECS)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Both splits of one dataset plus its normalisation constants (per RGB channel)."""
  train_images: np.ndarray  # uint8 [N, 32, 32, 3]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  name: str = ''
  source: str = ''


def load(dataset: str, source: str = 'auto', data_dir: str | None = None,
         synthetic_train_size: int = 1024, synthetic_test_size: int = 256,
         synthetic_seed: int = 0) -> Dataset:
  """Loads `dataset` ('cifar10' | 'cifar100') from `source`; see the module docstring.

  'auto' reads the pickle folder when `data_dir` holds one, else goes through TFDS
  (with `data_dir` as TFDS' data_dir; None means TFDS' default). Every user-fixable
  failure, missing data offline included, is a one-line UserError.
  """
  spec = _spec(dataset)
  if source not in SOURCES:
    raise UserError(f'unknown data source {source!r}; valid: {", ".join(SOURCES)}')
  if source == 'synthetic':
    arrays = synthetic_arrays(spec.num_classes, synthetic_train_size, synthetic_test_size,
                              synthetic_seed)
  elif source == 'folder' or (source == 'auto' and _has_pickle_folder(spec, data_dir)):
    source = 'folder'
    arrays = _load_pickle_folder(spec, data_dir)
  else:
    source = 'tfds'
    arrays = _load_tfds(spec, data_dir)
  train_images, train_labels, test_images, test_labels = arrays
  return Dataset(train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels,
                 num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
                 name=spec.tfds_name, source=source)


def _spec(dataset: str) -> _Spec:
  key = str(dataset).lower().replace('-', '').replace('_', '')
  if key not in _SPECS:
    raise UserError(f'unknown dataset {dataset!r}; valid: {", ".join(DATASETS)}')
  return _SPECS[key]


def _not_found(spec: _Spec, data_dir: str | None, why: str = '') -> UserError:
  """The one message for 'no local copy and TFDS could not get one'."""
  local = (f'put {spec.pickle_dir}/ under data_dir={data_dir!r}' if data_dir else
           f'set data_dir to a folder holding {spec.pickle_dir}/')
  why = f' ({why})' if why else ''
  return UserError(f'{spec.title} not found: {local} (config.data.data_dir) or let TFDS '
                   f'download it (needs internet){why}')


# ---------------------------------------------------------------- pickle folder


def _find_pickle_dir(spec: _Spec, data_dir: str | None) -> str | None:
  """`data_dir/<pickle_dir>` or `data_dir` itself, whichever holds the batch files."""
  if not data_dir:
    return None
  data_dir = os.path.expanduser(data_dir)
  for candidate in (os.path.join(data_dir, spec.pickle_dir), data_dir):
    names = spec.pickle_train + spec.pickle_test
    if all(os.path.isfile(os.path.join(candidate, name)) for name in names):
      return candidate
  return None


def _has_pickle_folder(spec: _Spec, data_dir: str | None) -> bool:
  """A complete folder, or a named one that is incomplete (reported, not skipped)."""
  return bool(_find_pickle_dir(spec, data_dir)) or bool(
      data_dir and os.path.isdir(os.path.join(os.path.expanduser(data_dir), spec.pickle_dir)))


class _ArrayUnpickler(pickle.Unpickler):
  """Rebuilds only dicts, lists and NumPy arrays: a data file must not run code."""

  _ALLOWED = {('numpy.core.multiarray', '_reconstruct'),
              ('numpy._core.multiarray', '_reconstruct'),
              ('numpy', 'ndarray'), ('numpy', 'dtype'),
              ('_codecs', 'encode')}  # Python 3 bytes under pickle protocol 2.

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}')


def _read_pickle_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """One batch file: rows of 3072 bytes in CHW order -> NHWC uint8, int32 labels."""
  try:
    with open(path, 'rb') as f:
      batch = _ArrayUnpickler(f, encoding='bytes').load()
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = np.asarray(batch['data'], np.uint8)
    labels = np.asarray(batch[label_key], np.int32)
  except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError,
          TypeError, ValueError) as err:
    raise UserError(f'{path} is not a CIFAR python batch file: {err!r}') from err
  if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
    raise UserError(f'{path}: expected data [N, 3072] and {label_key} [N], got '
                    f'{data.shape} and {labels.shape}')
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_pickle_folder(spec: _Spec, data_dir: str | None):
  folder = _find_pickle_dir(spec, data_dir)
  if folder is None:
    files = ', '.join(spec.pickle_train + spec.pickle_test)
    raise UserError(f'{spec.title} not found or incomplete: data_dir={data_dir!r} '
                    f'(config.data.data_dir) must contain {spec.pickle_dir}/ with {files}')

  def read(names):
    parts = [_read_pickle_batch(os.path.join(folder, n), spec.pickle_label_key)
             for n in names]
    return (np.ascontiguousarray(np.concatenate([p[0] for p in parts])),
            np.concatenate([p[1] for p in parts]))

  arrays = (*read(spec.pickle_train), *read(spec.pickle_test))
  _check_labels(spec, arrays[1], folder)
  _check_labels(spec, arrays[3], folder)
  return arrays


def _check_labels(spec: _Spec, labels: np.ndarray, where: str):
  if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise UserError(f'{where}: labels outside [0, {spec.num_classes}); is this really '
                    f'{spec.title}?')


# ---------------------------------------------------------------- TFDS


def _load_tfds(spec: _Spec, data_dir: str | None):
  """A prepared array_record copy if there is one, else TFDS' download of the archive."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # TFDS_DATA_DIR is read now, not when tensorflow_datasets was imported.
  root = os.path.expanduser(data_dir or tfds.core.constants.get_default_data_dir())
  arrays = _read_prepared(tfds, spec, root)
  if arrays is None:
    arrays = _download_archive(tfds, spec, root, data_dir)
  _check_labels(spec, arrays[1], f'TFDS {spec.tfds_name}')
  _check_labels(spec, arrays[3], f'TFDS {spec.tfds_name}')
  return arrays


def _read_prepared(tfds, spec: _Spec, root: str):
  """Reads an array_record copy (no TensorFlow needed), or None when there is none.

  Preparing one (`download_and_prepare`) needs TensorFlow for CIFAR; reading does not.
  """
  try:
    sources = tfds.data_source(spec.tfds_name, split=['train', 'test'],
                               data_dir=root, download=False)
  except (NotImplementedError, FileNotFoundError, KeyError, AssertionError,
          tfds.core.DatasetNotFoundError):
    # Not prepared (no splits), or prepared as tfrecord (no random access).
    return None
  arrays = []
  for source in sources:
    examples = _read_all(source)
    arrays.append(np.stack([np.asarray(e['image'], np.uint8) for e in examples])
                  if examples else np.zeros((0, *IMAGE_SHAPE), np.uint8))
    arrays.append(np.asarray([e['label'] for e in examples], np.int32))
  return tuple(arrays)


def _read_all(source, chunk: int = 4096) -> list:
  """All examples of a data source; batched reads are ~1.7x faster than item by item."""
  examples = []
  try:
    for start in range(0, len(source), chunk):
      examples += source.__getitems__(list(range(start, min(start + chunk, len(source)))))
  except TypeError:  # tfds.testing.mock_data's __getitems__ is broken (tfds 4.9.10).
    examples = [source[i] for i in range(len(source))]
  return examples


def _download_archive(tfds, spec: _Spec, root: str, data_dir: str | None):
  """Downloads to (or finds cached in) `root`/downloads the builder's archive; parses it."""
  url = spec.archive_url
  # The checksum is given here rather than read from the builder: on Python >= 3.9,
  # tfds 4.9's checksum lookup needs the undeclared package importlib_resources.
  url_info = tfds.download.checksums.UrlInfo(
      size=spec.archive_size, checksum=spec.archive_sha256,
      filename=os.path.basename(url))
  download_dir = os.path.join(root, 'downloads')
  manager = tfds.download.DownloadManager(
      download_dir=download_dir, url_infos={url: url_info}, dataset_name=spec.tfds_name)
  if not _cached(download_dir, url_info) and not _host_reachable(url):
    raise _not_found(spec, data_dir, f'cannot reach {urllib.parse.urlsplit(url).netloc}')
  try:
    archive = manager.download(url)
  except Exception as err:  # pylint: disable=broad-except
    # Network failures surface as requests/urllib/OSError, tfds DownloadError or a
    # checksum mismatch: all mean "TFDS could not get it", and the user can fix that.
    reason = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'
    raise _not_found(spec, data_dir, reason[:200]) from err
  return read_binary_archive(spec, os.fspath(archive))


def _cached(download_dir: str, url_info) -> bool:
  """Whether a download of this archive (same name stem and size) is already there.

  TFDS names cached downloads `<host>_<path stem><hash>.<ext>`; it re-checks the
  checksum itself, so this only decides whether the offline probe is needed.
  """
  stem = str(url_info.filename).split('.')[0]
  try:
    entries = list(os.scandir(download_dir))
  except OSError:
    return False
  return any(stem in e.name and e.is_file() and e.stat().st_size == url_info.size
             for e in entries)


def _host_reachable(url: str, timeout_s: float = 5.0) -> bool:
  """Fast offline check: TFDS retries a dead network for minutes before it gives up."""
  if any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY',
                                     'http_proxy', 'ALL_PROXY', 'all_proxy')):
    return True  # A proxy decides; let requests try.
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
      return True
  except OSError:
    return False


def read_binary_archive(spec_or_name, archive_path: str):
  """Parses the binary-format CIFAR .tar.gz (the one TFDS downloads) without extracting.

  Records are <label byte(s)><3072 pixel bytes in CHW order>; CIFAR-100's first label
  byte is the coarse label, the second the fine one used here.
  """
  spec = _spec(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
  wanted = {f'{spec.binary_dir}/{n}': n for n in spec.binary_train + spec.binary_test}
  found = {}
  try:
    with tarfile.open(archive_path, 'r:*') as archive:
      for member in archive:
        name = wanted.get(member.name.removeprefix('./'))
        if name is not None and member.isfile():
          found[name] = archive.extractfile(member).read()
  except (OSError, tarfile.TarError, EOFError) as err:
    raise UserError(f'{archive_path} is not a readable CIFAR archive: {err!r}') from err
  missing = sorted(set(wanted.values()) - set(found))
  if missing:
    raise UserError(f'{archive_path} lacks {", ".join(missing)}: not the {spec.title} '
                    'binary archive')
  record = spec.binary_label_offset + 1 + 3072

  def parse(names):
    rows = [np.frombuffer(found[n], np.uint8) for n in names]
    if any(r.size % record for r in rows):
      raise UserError(f'{archive_path}: file size is not a multiple of {record} bytes')
    rows = np.concatenate(rows).reshape(-1, record)
    labels = rows[:, spec.binary_label_offset].astype(np.int32)
    images = rows[:, -3072:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels

  return (*parse(spec.binary_train), *parse(spec.binary_test))


# ---------------------------------------------------------------- synthetic


def synthetic_arrays(num_classes: int, train_size: int, test_size: int, seed: int = 0):
  """Deterministic CIFAR-shaped data whose label is visible through crop and flip.

  Each class has a colour and a stripe pattern that varies only from row to row (so
  horizontal flips keep it and 4-pixel shifts barely move it); images add uniform noise.
  """
  if train_size < 1 or test_size < 1:
    raise UserError(f'synthetic sizes must be >= 1, got {train_size} and {test_size}')
  rng = np.random.default_rng(seed)
  colours = rng.uniform(-1.0, 1.0, (num_classes, 1, 1, 3))
  frequency = rng.integers(1, 4, (num_classes, 1, 1, 1))
  phase = rng.uniform(0.0, 2 * np.pi, (num_classes, 1, 1, 1))
  rows = np.arange(32, dtype=np.float64).reshape(1, 32, 1, 1)
  templates = 128 + 50 * colours + 40 * np.sin(2 * np.pi * frequency * rows / 32 + phase)

  def make(size):
    labels = rng.integers(0, num_classes, size).astype(np.int32)
    noise = rng.uniform(-40.0, 40.0, (size, *IMAGE_SHAPE))
    images = np.clip(np.rint(templates[labels] + noise), 0, 255).astype(np.uint8)
    return images, labels

  return (*make(train_size), *make(test_size))
