"""`.safetensors` files (timm / Hugging Face hub weights) read with NumPy alone.

The format (huggingface/safetensors): an unsigned little-endian 64-bit header length, a
JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes, offsets relative to the end of the header. The
`safetensors` package's NumPy reader has no bfloat16, so this reader (a few lines, every
offset checked) handles all the dtypes the hub uses, bfloat16 through ml_dtypes.
"""
import json
import os
import struct

import ml_dtypes
import numpy as np

from kd_jax.errors import UserError

_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


def is_safetensors(path):
  """True for a `.safetensors` name, or a file that starts like one (a length, then '{')."""
  if os.fspath(path).endswith('.safetensors'):
    return True
  with open(path, 'rb') as f:
    head = f.read(9)
  return (len(head) == 9 and head[8:9] == b'{'
          and struct.unpack('<Q', head[:8])[0] < _MAX_HEADER)


def _parse(data, size):
  """{name: array} from the mapped file; raises ValueError on anything malformed."""
  (header_len,) = struct.unpack('<Q', bytes(data[:8]))
  if header_len > min(_MAX_HEADER, size - 8):
    raise ValueError(f'header length {header_len} does not fit the file')
  header = json.loads(bytes(data[8:8 + header_len]))
  body = data[8 + header_len:]
  tensors = {}
  for name, spec in header.items():
    if name == '__metadata__':
      continue
    if spec['dtype'] not in _DTYPES:
      raise ValueError(f'tensor {name} has unsupported dtype {spec["dtype"]}')
    dtype = np.dtype(_DTYPES[spec['dtype']]).newbyteorder('<')
    shape = tuple(int(n) for n in spec['shape'])
    begin, end = (int(n) for n in spec['data_offsets'])
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
      raise ValueError(f'tensor {name} has offsets {begin}..{end} that do not match '
                       f'its shape {shape} or the file')
    array = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
    tensors[name] = array.astype(array.dtype.newbyteorder('='))  # a copy we own
  return tensors


def read_safetensors(path):
  """Reads a `.safetensors` file as {key: np.ndarray}; a bad file is a one-line UserError."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'safetensors checkpoint {path} does not exist')
  try:
    size = os.path.getsize(path)
    if size < 8:
      raise ValueError('shorter than its 8-byte header length')
    data = np.memmap(path, dtype=np.uint8, mode='r')
    return _parse(data, size)
  except (ValueError, KeyError, TypeError, AttributeError, struct.error, OSError) as error:
    raise UserError(f'cannot read safetensors checkpoint {path}: {error}') from None
