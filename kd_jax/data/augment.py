"""CIFAR augmentation as pure jnp functions, run inside the jitted train step.

RandomCrop(32, padding=4) with zero padding + RandomHorizontalFlip(0.5), as torchvision
applies them (METHODS.md section 6), independently per sample, on a uint8 NHWC batch
that is already on the device.
"""
import jax
import jax.numpy as jnp


def crop_flip_params(key, batch_size: int, padding: int = 4):
  """Per-sample crop offsets (int32 [B, 2], row/col in [0, 2*padding]) and flips (bool [B])."""
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (batch_size, 2), 0, 2 * padding + 1, jnp.int32)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
  return offsets, flips


def crop(images, offsets, padding: int = 4):
  """Zero-pads by `padding` and cuts each image's HxW window at its (row, col) offset."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  cut = lambda image, offset: jax.lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (height, width, channels))
  return jax.vmap(cut)(padded, offsets)


def flip(images, flips):
  """Mirrors (left-right) the images whose flag in `flips` [B] is set."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def random_crop_flip(key, images, padding: int = 4):
  """Random zero-padded crop then random horizontal flip; dtype and shape kept."""
  offsets, flips = crop_flip_params(key, images.shape[0], padding)
  return flip(crop(images, offsets, padding), flips)


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 [..., 3] -> (x / 255 - mean) / std per channel, in `dtype` (computed in f32)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)
