"""Strong view of multi-view CSKD: RandAugment + Cutout as pure jnp, run inside the train step.

What the public code does (MLKD, Jin et al. 2023, `mdistiller/dataset/cifar100.py`, which the
CSKD code builds on): strong view = RandomCrop(32, padding=4) -> RandomHorizontalFlip ->
`RandAugment(2, 10)`, a PIL RandAugment of the FixMatch/TorchSSL kind (ildoonet lineage) whose
`m` is unused ("deprecated"): it draws 2 ops uniformly *with replacement* from 14, applies each
one always, with a value drawn uniformly from the op's range, then a Cutout whose side is
U[0, 0.5) * 32 px filled with (125, 123, 114).

What this module implements (`strong_view` = `random_crop_flip` -> `rand_augment` -> Cutout,
in MLKD's order, each independent per sample, on a uint8 NHWC batch):

- pool (index: op, value range at magnitude 10, identity value):
  0 AutoContrast, 1 Brightness [0.05, 0.95] (1), 2 Color [0.05, 0.95] (1),
  3 Contrast [0.05, 0.95] (1), 4 Equalize, 5 Identity, 6 Posterize bits int([4, 8)) (8),
  7 Rotate [-30, 30] degrees (0), 8 Sharpness [0.05, 0.95] (1), 9 ShearX [-0.3, 0.3] (0),
  10 ShearY [-0.3, 0.3] (0), 11 Solarize threshold [0, 256] (256),
  12 TranslateX [-0.3, 0.3] * width px (0), 13 TranslateY [-0.3, 0.3] * height px (0).
- probabilities: `num_ops` ops per image, each uniform over the 14 (with replacement), always
  applied (no 0.5 skip), value uniform in the range. The signed ranges give the random sign;
  the enhance factors never exceed 1 (these ops only weaken), as in MLKD.
- magnitude m in [0, 10]: each range is scaled towards the op's identity value by m / 10
  (`lo' = id + m/10 (lo - id)`, same for hi), so m = 10 (the default) is exactly MLKD's ranges
  and m = 0 makes the 11 valued ops the identity (AutoContrast and Equalize have no value).
  MLKD ignores m; this mapping is kd_jax's, for ablations only.
- Cutout (`cutout="public_code"`, the default): MLKD's CutoutAbs exactly. Per image one
  v ~ U[0, 16) (0.5 x width), a centre per axis drawn as `np.random.uniform(32)` = U(1, 32],
  corner `int(max(0, c - v/2))`, far corner `min(32, corner + v)`, and PIL's rectangle paints
  both corners inclusive (truncating them to int): side floor(v) + 1 in 1..16 px, kept whole
  at the top/left border and clipped only at the bottom/right. `cutout="paper_16px"`: the
  paper text's fixed 16 px square at a centre uniform over the pixels, clipped at every
  border (DeVries & Taylor's Cutout). Both fill with (125, 123, 114).

The ops follow Pillow 13 (checked against it in tests/test_randaugment.py):
- LUT ops per channel: Posterize keeps the top `bits` bits; Solarize inverts values >= t;
  AutoContrast maps [min, max] -> [0, 255] as floor((x - min) * 255 / (max - min)) (PIL does
  this in doubles, which can land one level lower on exact multiples); Equalize is PIL's
  histogram CDF LUT `(step // 2 + #pixels below x) // step`, step = (N - count(max)) // 255,
  identity when step = 0, clipped at 255 as PIL's `point` does.
- enhance ops are PIL's `blend(degenerate, image, f)` = trunc(d + f (x - d)) in float32, with
  degenerate = black (Brightness), the ITU-R 601 grey image `(19595 R + 38470 G + 7471 B +
  2^15) >> 16` (Color), that grey image's mean rounded (Contrast), or the SMOOTH filter
  [[1,1,1],[1,5,1],[1,1,1]] / 13 rounded, border pixels kept (Sharpness).
- affine ops (Rotate about the centre, counter-clockwise; shears; translations) map each
  output pixel centre back to the input like PIL's `transform(AFFINE)`, in its 16.16 fixed
  point, and take the pixel there (floor of the source coordinate: PIL's NEAREST, its default
  for `rotate` and `transform`); pixels mapped from outside are 0 (black), PIL's default fill,
  which MLKD uses. Differences from PIL: the fixed-point coefficients come from float32
  (PIL: double), and translations also use fixed point (PIL: a double path), so a pixel whose
  source coordinate lies within ~1e-3 px of a pixel edge may take its neighbour (rare; none in
  the tests' shears and translations).

Per-sample ops: every op runs on the whole batch and each image takes its own op's result
(see `apply_ops`; measured faster on CPU than `jax.lax.switch` under `jax.vmap`).
"""

import jax
import jax.numpy as jnp

from kd_jax.data.augment import random_crop_flip

FILL = (125, 123, 114)
MAX_MAGNITUDE = 10


# ---------------------------------------------------------------- helpers on NHWC batches
# Integer division does not vectorise on CPU, so quotients are estimated in float32 (XLA may
# use an approximate reciprocal) and corrected by one with an integer remainder check: exact.


def _per_sample(values, ndim=4):
  """[B] -> [B, 1, 1, 1] (or `ndim` dims) to broadcast against a batch."""
  return jnp.asarray(values).reshape((-1,) + (1,) * (ndim - 1))


def _floor_div(numerator, denominator):
  """numerator // denominator for int32 arrays, 0 <= numerator < 2^24, denominator > 0."""
  quotient = jnp.floor(numerator.astype(jnp.float32) / denominator.astype(jnp.float32))
  quotient = quotient.astype(jnp.int32)
  remainder = numerator - quotient * denominator
  return quotient - (remainder < 0) + (remainder >= denominator)


def _apply_lut(images, lut):
  """Maps uint8 [B, H, W, C] through per-sample, per-channel tables int [B, C, 256]."""
  batch, _, _, channels = images.shape
  rows = jnp.arange(batch)[:, None, None, None]
  return lut[rows, jnp.arange(channels), images.astype(jnp.int32)].astype(jnp.uint8)


def _grey(images):
  """PIL's RGB -> L conversion (ITU-R 601-2 luma, rounded), int32 [B, H, W]."""
  x = images.astype(jnp.int32)
  return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _blend(degenerate, images, factor):
  """PIL's Image.blend(degenerate, images, factor[B]): truncated float32 interpolation."""
  d = degenerate.astype(jnp.float32)
  out = d + _per_sample(factor).astype(jnp.float32) * (images.astype(jnp.float32) - d)
  return jnp.clip(jnp.trunc(out), 0, 255).astype(jnp.uint8)


def _smooth(images):
  """PIL's ImageFilter.SMOOTH: 3x3 kernel (1s, centre 5) / 13, rounded; borders unchanged."""
  x = jnp.asarray(images, jnp.int32)
  height, width = x.shape[1:3]
  box = sum(x[:, i:height - 2 + i, j:width - 2 + j] for i in range(3) for j in range(3))
  # PIL rounds S / 13, which is never a tie: floor((S + 6) / 13).
  inner = _floor_div(box + 4 * x[:, 1:-1, 1:-1] + 6, jnp.int32(13))
  return x.at[:, 1:-1, 1:-1].set(inner).astype(jnp.uint8)


def _fixed(value):
  """PIL's 16.16 fixed point: floor(value * 2^16 + 0.5) as int32."""
  return jnp.floor(value * 65536.0 + 0.5).astype(jnp.int32)


def _affine(images, matrix):
  """PIL transform(AFFINE, matrix, NEAREST) per sample; pixels from outside become 0.

  `matrix` = (a, b, c, d, e, f), each float [B], maps output to input coordinates as PIL
  does: x_in = a x + b y + c, y_in = d x + e y + f at pixel centres (x + .5, y + .5), in
  PIL's 16.16 fixed point, and takes the pixel at (floor(x_in), floor(y_in)).
  """
  images = jnp.asarray(images)
  batch, height, width, _ = images.shape
  a, b, c, d, e, f = (_per_sample(jnp.broadcast_to(m, (batch,)), 3).astype(jnp.float32)
                      for m in matrix)
  xs = jnp.arange(width, dtype=jnp.int32)[None, None, :]
  ys = jnp.arange(height, dtype=jnp.int32)[None, :, None]
  x_in = (_fixed(c + 0.5 * a + 0.5 * b) + xs * _fixed(a) + ys * _fixed(b)) >> 16
  y_in = (_fixed(f + 0.5 * d + 0.5 * e) + xs * _fixed(d) + ys * _fixed(e)) >> 16
  inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
  rows = jnp.arange(batch)[:, None, None]
  gathered = images[rows, jnp.clip(y_in, 0, height - 1), jnp.clip(x_in, 0, width - 1)]
  return jnp.where(inside[..., None], gathered, jnp.zeros_like(gathered))


# ---------------------------------------------------------------- the ops: (NHWC uint8, [B])


def auto_contrast(images, values=None):
  """PIL ImageOps.autocontrast (cutoff 0): each channel's [min, max] stretched to [0, 255]."""
  del values
  x = images.astype(jnp.int32)
  lo = x.min(axis=(1, 2), keepdims=True)
  hi = x.max(axis=(1, 2), keepdims=True)
  stretched = _floor_div((x - lo) * 255, jnp.maximum(hi - lo, 1))
  return jnp.where(hi > lo, stretched, x).astype(jnp.uint8)


def brightness(images, factor):
  """PIL ImageEnhance.Brightness: blend with black."""
  return _blend(jnp.zeros_like(images), images, factor)


def color(images, factor):
  """PIL ImageEnhance.Color: blend with the greyscale image."""
  return _blend(_grey(images)[..., None], images, factor)


def contrast(images, factor):
  """PIL ImageEnhance.Contrast: blend with the grey image's mean level, rounded half up."""
  grey = _grey(images)
  count = grey.shape[1] * grey.shape[2]
  mean = (2 * grey.sum(axis=(1, 2)) + count) // (2 * count)  # int(mean + 0.5), exactly.
  return _blend(_per_sample(mean), images, factor)


def equalize(images, values=None):
  """PIL ImageOps.equalize: per-channel histogram (256 bins) CDF lookup table."""
  del values
  batch, height, width, channels = images.shape
  x = images.astype(jnp.int32)
  bins = (jnp.arange(batch * channels).reshape(batch, 1, 1, channels) * 256 + x).reshape(-1)
  hist = jnp.zeros(batch * channels * 256, jnp.int32).at[bins].add(1)
  hist = hist.reshape(batch, channels, 256)
  top = x.max(axis=(1, 2))[..., None]  # [B, C, 1]
  step = (height * width - jnp.take_along_axis(hist, top, axis=2)) // 255
  below = jnp.cumsum(hist, axis=2) - hist
  lut = jnp.minimum(_floor_div(step // 2 + below, jnp.maximum(step, 1)), 255)
  lut = jnp.where(step > 0, lut, jnp.arange(256))
  return _apply_lut(images, lut)


def identity(images, values=None):
  """Leaves the images unchanged."""
  del values
  return images


def posterize(images, bits):
  """PIL ImageOps.posterize: keep the top int(bits) bits (1..8) of each value."""
  bits = jnp.clip(jnp.floor(bits).astype(jnp.int32), 1, 8)
  mask = (0xFF << (8 - _per_sample(bits))) & 0xFF
  return (images.astype(jnp.int32) & mask).astype(jnp.uint8)


def rotate(images, degrees):
  """PIL Image.rotate(degrees): counter-clockwise about the image centre, NEAREST, fill 0."""
  height, width = images.shape[1:3]
  theta = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2, height / 2
  return _affine(images, (cos, sin, cx - cos * cx - sin * cy,
                          -sin, cos, cy + sin * cx - cos * cy))


def sharpness(images, factor):
  """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
  return _blend(_smooth(images), images, factor)


def shear_x(images, shear):
  """PIL transform(AFFINE, (1, shear, 0, 0, 1, 0)): x_in = x + shear * y."""
  return _affine(images, (1.0, shear, 0.0, 0.0, 1.0, 0.0))


def shear_y(images, shear):
  """PIL transform(AFFINE, (1, 0, 0, shear, 1, 0)): y_in = y + shear * x."""
  return _affine(images, (1.0, 0.0, 0.0, shear, 1.0, 0.0))


def solarize(images, threshold):
  """PIL ImageOps.solarize: values >= threshold become 255 - value."""
  keep = images.astype(jnp.float32) < _per_sample(threshold)
  return jnp.where(keep, images, 255 - images)


def translate_x(images, fraction):
  """PIL transform(AFFINE, (1, 0, fraction * width, 0, 1, 0)): content moves left if > 0."""
  return _affine(images, (1.0, 0.0, fraction * images.shape[2], 0.0, 1.0, 0.0))


def translate_y(images, fraction):
  """PIL transform(AFFINE, (1, 0, 0, 0, 1, fraction * height)): content moves up if > 0."""
  return _affine(images, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * images.shape[1]))


# (name, op, lo, hi, identity value): value ranges at magnitude 10, MLKD's `augment_list()`.
OPS = (
    ('AutoContrast', auto_contrast, 0.0, 1.0, 0.0),
    ('Brightness', brightness, 0.05, 0.95, 1.0),
    ('Color', color, 0.05, 0.95, 1.0),
    ('Contrast', contrast, 0.05, 0.95, 1.0),
    ('Equalize', equalize, 0.0, 1.0, 0.0),
    ('Identity', identity, 0.0, 1.0, 0.0),
    ('Posterize', posterize, 4.0, 8.0, 8.0),
    ('Rotate', rotate, -30.0, 30.0, 0.0),
    ('Sharpness', sharpness, 0.05, 0.95, 1.0),
    ('ShearX', shear_x, -0.3, 0.3, 0.0),
    ('ShearY', shear_y, -0.3, 0.3, 0.0),
    ('Solarize', solarize, 0.0, 256.0, 256.0),
    ('TranslateX', translate_x, -0.3, 0.3, 0.0),
    ('TranslateY', translate_y, -0.3, 0.3, 0.0),
)
OP_NAMES = tuple(name for name, *_ in OPS)


# ---------------------------------------------------------------- batched, keyed


def value_ranges(magnitude=MAX_MAGNITUDE):
  """Per-op (lo, hi) float32 [len(OPS)] at `magnitude`: MLKD's ranges scaled to identity."""
  scale = magnitude / MAX_MAGNITUDE
  lo = jnp.array([ident + scale * (lo - ident) for _, _, lo, _, ident in OPS], jnp.float32)
  hi = jnp.array([ident + scale * (hi - ident) for _, _, _, hi, ident in OPS], jnp.float32)
  return lo, hi


def rand_augment_params(key, batch_size: int, num_ops: int = 2, magnitude=MAX_MAGNITUDE):
  """Per-sample op indices (int32 [num_ops, B]) and values (float32 [num_ops, B])."""
  op_key, value_key = jax.random.split(key)
  ops = jax.random.randint(op_key, (num_ops, batch_size), 0, len(OPS), jnp.int32)
  lo, hi = value_ranges(magnitude)
  unit = jax.random.uniform(value_key, (num_ops, batch_size))
  return ops, lo[ops] + (hi[ops] - lo[ops]) * unit


def apply_ops(images, ops, values):
  """Applies op `ops[b]` with value `values[b]` to image b of a uint8 NHWC batch.

  Every op runs on the whole batch, then each sample takes its own op's result (one gather
  from the stacked results): on CPU, batch 64, this was ~3x faster than a chain of
  `jnp.where` selects and far faster than `jax.lax.switch` under `jax.vmap` (which XLA also
  turns into run-every-branch-and-select).
  """
  results = jnp.stack([op(images, values) for _, op, *_ in OPS], axis=1)  # [B, ops, H, W, C]
  return jnp.take_along_axis(results, _per_sample(ops, 5), axis=1)[:, 0]


def rand_augment(key, images, num_ops: int = 2, magnitude=MAX_MAGNITUDE):
  """`num_ops` random ops in sequence per image (MLKD's RandAugment without its cutout)."""
  ops, values = rand_augment_params(key, images.shape[0], num_ops, magnitude)
  for i in range(num_ops):
    images = apply_ops(images, ops[i], values[i])
  return images


CUTOUTS = ("public_code", "paper_16px")


def cutout_boxes(key, batch_size, height, width, cutout="public_code"):
  """Per image (top, left, bottom, right), inclusive pixel bounds, [B, 1] int32 each;
  bounds past the image are clipped when painting. See the module docstring."""
  side_key, row_key, col_key = jax.random.split(key, 3)
  if cutout == "paper_16px":
    side = 16
    top = jax.random.randint(row_key, (batch_size, 1), 0, height) - side // 2
    left = jax.random.randint(col_key, (batch_size, 1), 0, width) - side // 2
    return top, left, top + side - 1, left + side - 1
  if cutout != "public_code":
    raise ValueError(f"unknown cutout {cutout!r}; valid: {', '.join(CUTOUTS)}")
  v = jax.random.uniform(side_key, (batch_size, 1), maxval=0.5 * width)

  def corners(axis_key, extent):  # np.random.uniform(extent) draws from (1, extent]
    centre = extent - (extent - 1) * jax.random.uniform(axis_key, (batch_size, 1))
    near = jnp.floor(jnp.maximum(0.0, centre - v / 2))
    far = jnp.floor(jnp.minimum(float(extent), near + v))
    return near.astype(jnp.int32), far.astype(jnp.int32)

  (top, bottom), (left, right) = corners(row_key, height), corners(col_key, width)
  return top, left, bottom, right


def paint_boxes(images, top, left, bottom, right, fill=FILL):
  """Fills each image's inclusive box (clipped to the image) with `fill`."""
  rows = jnp.arange(images.shape[1])[None, :]
  cols = jnp.arange(images.shape[2])[None, :]
  in_rows = (rows >= top) & (rows <= bottom)  # [B, H]
  in_cols = (cols >= left) & (cols <= right)  # [B, W]
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(inside, jnp.asarray(fill, images.dtype), images)


def strong_view(key, images, num_ops: int = 2, magnitude=MAX_MAGNITUDE,
                cutout="public_code", padding: int = 4):
  """MLKD's strong view: crop + flip, then RandAugment, then Cutout; uint8 NHWC in and out."""
  crop_key, augment_key, cutout_key = jax.random.split(key, 3)
  images = random_crop_flip(crop_key, images, padding)
  images = rand_augment(augment_key, images, num_ops, magnitude)
  batch_size, height, width, _ = images.shape
  return paint_boxes(images, *cutout_boxes(cutout_key, batch_size, height, width, cutout))
