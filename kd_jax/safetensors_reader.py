"""`.safetensors` files (timm / Hugging Face hub weights), read without torch.

The `safetensors` package does the reading (header, offsets, dtypes); its Flax reader is
the one that knows bfloat16 (its NumPy reader does not). This module adds what the teacher
loader needs: recognising such a file whatever its name, NumPy arrays out, and one-line
errors.
"""
import os
import struct

import numpy as np

from kd_jax.errors import UserError

_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


def is_safetensors(path):
  """True for a `.safetensors` name, or a file that starts like one (a length, then '{')."""
  if os.fspath(path).endswith('.safetensors'):
    return True
  with open(path, 'rb') as f:
    head = f.read(9)
  return (len(head) == 9 and head[8:9] == b'{'
          and struct.unpack('<Q', head[:8])[0] < _MAX_HEADER)


def read_safetensors(path):
  """Reads a `.safetensors` file as {key: np.ndarray}; a bad file is a one-line UserError."""
  from safetensors import flax as safetensors_flax  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'safetensors checkpoint {path} does not exist')
  try:
    tensors = safetensors_flax.load_file(path)
  except Exception as error:  # pylint: disable=broad-except  (SafetensorError, OSError...)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise UserError(f'cannot read safetensors checkpoint {path}: {message}') from None
  return {name: np.asarray(value) for name, value in tensors.items()}
