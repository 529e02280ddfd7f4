"""kd_jax.data.randaugment: the strong view of multi-view CSKD (RandAugment + Cutout).

Each op is compared with Pillow (what MLKD runs) where Pillow is importable, and with small
NumPy references that always run; then the batched, keyed pipeline: per-sample selection,
value ranges, Cutout geometry, determinism, jit and 8-device sharding.
"""
import importlib.util

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data import randaugment as ra
from kd_jax.data.augment import random_crop_flip

HAS_PIL = importlib.util.find_spec('PIL') is not None
needs_pil = pytest.mark.skipif(not HAS_PIL, reason='Pillow not installed: no PIL reference')

# ---------------------------------------------------------------- fixtures


def _test_images(seed=0):
  """16 images of 4 kinds: full-range noise, mid-range noise, 8 levels, smooth random walks.

  Narrow ranges, repeated levels and flat areas exercise the histogram ops (equalize's step,
  autocontrast's span) and the rounding of the blends.
  """
  rng = np.random.default_rng(seed)
  out = []
  for i in range(16):
    kind = i % 4
    if kind == 0:
      image = rng.integers(0, 256, (32, 32, 3))
    elif kind == 1:
      image = rng.integers(40, 200, (32, 32, 3))
    elif kind == 2:
      image = rng.integers(0, 8, (32, 32, 3)) * 30 + 5
    else:
      image = np.cumsum(rng.integers(-3, 4, (32, 32, 3)), axis=1) + 128
    out.append(np.clip(image, 0, 255))
  images = np.stack(out).astype(np.uint8)
  images[1] = 77  # A flat image: autocontrast / equalize must leave it alone.
  images[5, :, :, 0] = rng.integers(0, 100, (32, 32))
  images[5, 3, 9, 0] = 255  # One bright pixel: equalize's table goes past 255 there (clipped).
  return images


def _op(name):
  return ra.OPS[ra.OP_NAMES.index(name)][1]


def _values(name, count, seed=1):
  """`count` float32 values across the op's magnitude-10 range, both ends included."""
  _, _, lo, hi, _ = ra.OPS[ra.OP_NAMES.index(name)]
  rng = np.random.default_rng(seed)
  values = lo + (hi - lo) * rng.random(count)
  values[:2] = lo, hi
  return values.astype(np.float32)


def _pil(name, image, value):
  """What MLKD's PIL op does to one uint8 HWC image (its `augment_list()` functions)."""
  from PIL import Image, ImageEnhance, ImageOps  # pylint: disable=g-import-not-at-top
  im = Image.fromarray(image)
  value = float(value)
  width, height = im.size
  affine = lambda matrix: im.transform(im.size, Image.AFFINE, matrix)
  result = {
      'AutoContrast': lambda: ImageOps.autocontrast(im),
      'Brightness': lambda: ImageEnhance.Brightness(im).enhance(value),
      'Color': lambda: ImageEnhance.Color(im).enhance(value),
      'Contrast': lambda: ImageEnhance.Contrast(im).enhance(value),
      'Equalize': lambda: ImageOps.equalize(im),
      'Identity': lambda: im,
      'Posterize': lambda: ImageOps.posterize(im, max(1, int(value))),
      'Rotate': lambda: im.rotate(value),
      'Sharpness': lambda: ImageEnhance.Sharpness(im).enhance(value),
      'ShearX': lambda: affine((1, value, 0, 0, 1, 0)),
      'ShearY': lambda: affine((1, 0, 0, value, 1, 0)),
      'Solarize': lambda: ImageOps.solarize(im, value),
      'TranslateX': lambda: affine((1, 0, value * width, 0, 1, 0)),
      'TranslateY': lambda: affine((1, 0, 0, 0, 1, value * height)),
  }[name]()
  return np.asarray(result)


# ---------------------------------------------------------------- each op against Pillow


@needs_pil
@pytest.mark.parametrize('name', [n for n in ra.OP_NAMES if n not in ('AutoContrast', 'Rotate')])
def test_op_matches_pil_exactly(name):
  images = _test_images()
  values = _values(name, len(images))
  out = np.asarray(jax.jit(_op(name))(images, values))
  assert out.dtype == np.uint8 and out.shape == images.shape
  for image, value, got in zip(images, values, out):
    np.testing.assert_array_equal(got, _pil(name, image, value), err_msg=f'{name}({value})')


@needs_pil
def test_auto_contrast_matches_pil_within_one_level_where_pil_rounds_down():
  """PIL computes x * 255/span - lo * 255/span in doubles: on exact integers it may land 1 low."""
  images = _test_images()
  out = np.asarray(jax.jit(ra.auto_contrast)(images)).astype(int)
  for image, got in zip(images, out):
    expected = _pil('AutoContrast', image, 0).astype(int)
    assert np.abs(got - expected).max() <= 1
    x = image.astype(int)
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    differs = got != expected
    assert (got[differs] == expected[differs] + 1).all()
    assert (((x - lo) * 255 % np.maximum(hi - lo, 1))[differs] == 0).all()


@needs_pil
def test_rotate_matches_pil():
  """Same 16.16 fixed-point mapping as PIL; cos/sin in float32 may move a rare pixel."""
  images = _test_images()
  values = np.concatenate([[-30, 30, 0, 0.5, -7.25], _values('Rotate', 11)]).astype(np.float32)
  out = np.asarray(jax.jit(ra.rotate)(images, values))
  mismatched = sum((got != _pil('Rotate', image, value)).any(-1).sum()
                   for image, value, got in zip(images, values, out))
  assert mismatched <= 0.002 * images[..., 0].size


# ---------------------------------------------------------------- NumPy references (no PIL)


def _np_equalize(image):
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    hist = np.bincount(channel.ravel(), minlength=256)
    step = (channel.size - hist[channel.max()]) // 255
    if step == 0:
      out[..., c] = channel
      continue
    below = np.cumsum(hist) - hist
    out[..., c] = np.minimum((step // 2 + below) // step, 255)[channel]
  return out


def test_lut_ops_match_numpy():
  images = _test_images()
  x = images.astype(int)
  bits = np.array([4, 5, 6, 7, 8, 7.9, 4.2, 1] * 2, np.float32)
  masks = (0xFF << (8 - np.floor(bits).astype(int))) & 0xFF
  np.testing.assert_array_equal(ra.posterize(images, bits), x & masks[:, None, None, None])
  thresholds = np.array([0, 1, 127.5, 128, 255, 256, 200.2, 10] * 2, np.float32)
  expected = np.where(x < thresholds[:, None, None, None], x, 255 - x)
  np.testing.assert_array_equal(ra.solarize(images, thresholds), expected)
  lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
  stretched = np.where(hi > lo, (x - lo) * 255 // np.maximum(hi - lo, 1), x)
  np.testing.assert_array_equal(ra.auto_contrast(images), stretched)
  np.testing.assert_array_equal(ra.equalize(images), np.stack([_np_equalize(i) for i in images]))
  assert np.asarray(ra.equalize(images))[5, 3, 9, 0] == 255  # Table value 256, clipped.
  np.testing.assert_array_equal(ra.equalize(images)[1], images[1])  # Flat: unchanged.


def test_enhance_ops_match_numpy():
  images = _test_images()[:4]
  x = images.astype(np.float32)
  factors = np.array([0.05, 0.5, 0.95, 1.0], np.float32)
  f = factors[:, None, None, None]
  blend = lambda d: np.clip(np.trunc(d + f * (x - d)), 0, 255)  # float32 throughout.
  np.testing.assert_array_equal(ra.brightness(images, factors), blend(np.zeros_like(x)))
  xi = images.astype(np.int64)
  grey = (xi[..., 0] * 19595 + xi[..., 1] * 38470 + xi[..., 2] * 7471 + 0x8000) >> 16
  grey_rgb = grey[..., None].astype(np.float32)
  np.testing.assert_array_equal(ra.color(images, factors), blend(grey_rgb))
  mean = np.floor(grey.mean(axis=(1, 2)) + 0.5)[:, None, None, None].astype(np.float32)
  np.testing.assert_array_equal(ra.contrast(images, factors), blend(mean))
  box = sum(xi[:, i:30 + i, j:30 + j] for i in range(3) for j in range(3))
  smooth = xi.copy()  # Border pixels kept; S / 13 is never a tie, so round() is unambiguous.
  smooth[:, 1:-1, 1:-1] = np.round((box + 4 * xi[:, 1:-1, 1:-1]) / 13)
  np.testing.assert_array_equal(ra.sharpness(images, factors), blend(smooth.astype(np.float32)))
  np.testing.assert_array_equal(ra.sharpness(images, factors)[3], images[3])  # Factor 1.


def test_affine_ops_match_numpy():
  images = _test_images()[:4]
  # Translation by t px: out(x) = in(floor(x + 0.5 + t)), a zero-filled shift by floor(t + .5).
  shifts = np.array([3, -5, 0, 9.5], np.float32)
  out = np.asarray(ra.translate_x(images, shifts / 32))
  for image, shift, got in zip(images, shifts, out):
    s = int(np.floor(shift + 0.5))
    expected = np.zeros_like(image)
    if s >= 0:
      expected[:, :32 - s] = image[:, s:]
    else:
      expected[:, -s:] = image[:, :32 + s]
    np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(ra.translate_y(images, shifts / 32),
                                np.swapaxes(ra.translate_x(np.swapaxes(images, 1, 2),
                                                           shifts / 32), 1, 2))
  # Shear x by s: row y reads x + floor(0.5 + s (y + 0.5)) (exact in float for these s).
  shears = np.array([0.25, -0.125, 0.0, 0.3], np.float32)
  out = np.asarray(ra.shear_x(images, shears))
  for image, shear, got in zip(images, shears, out):
    for y in range(32):
      src = np.arange(32) + int(np.floor(0.5 + shear * (y + 0.5)))
      valid = (src >= 0) & (src < 32)
      np.testing.assert_array_equal(got[y, valid], image[y, src[valid]])
      assert (got[y, ~valid] == 0).all()
  # Rotations by 0 and 180 degrees about the centre are exact.
  np.testing.assert_array_equal(ra.rotate(images, np.zeros(4, np.float32)), images)
  np.testing.assert_array_equal(ra.rotate(images, np.full(4, 180, np.float32)),
                                images[:, ::-1, ::-1])


def test_ops_at_their_identity_value_change_nothing():
  images = _test_images()[:4]
  for name, op, _, _, ident in ra.OPS:
    if name not in ('AutoContrast', 'Equalize'):
      np.testing.assert_array_equal(op(images, np.full(4, ident, np.float32)), images, name)


# ---------------------------------------------------------------- per-sample selection, ranges


def test_apply_ops_gives_each_sample_its_own_op():
  images = _test_images()[:14]
  ops = np.random.default_rng(2).permutation(14).astype(np.int32)
  values = np.array([_values(ra.OP_NAMES[i], 3, seed=i)[2] for i in ops], np.float32)
  out = np.asarray(jax.jit(ra.apply_ops)(images, ops, values))
  every_op = jax.jit(lambda x, v: [op(x, v) for _, op, *_ in ra.OPS])(images, values)
  for b, i in enumerate(ops):
    np.testing.assert_array_equal(out[b], every_op[i][b], err_msg=ra.OP_NAMES[i])


def test_value_ranges_are_mlkd_at_10_and_identity_at_0():
  lo, hi = ra.value_ranges(10)
  table = {'Brightness': (0.05, 0.95), 'Posterize': (4, 8), 'Rotate': (-30, 30),
           'ShearY': (-0.3, 0.3), 'Solarize': (0, 256), 'TranslateX': (-0.3, 0.3)}
  for name, (want_lo, want_hi) in table.items():
    i = ra.OP_NAMES.index(name)
    np.testing.assert_allclose((lo[i], hi[i]), (want_lo, want_hi), rtol=1e-6)
  lo, hi = ra.value_ranges(0)
  idents = np.array([ident for *_, ident in ra.OPS], np.float32)
  np.testing.assert_array_equal(lo, idents)
  np.testing.assert_array_equal(hi, idents)
  lo, hi = ra.value_ranges(5)
  i = ra.OP_NAMES.index('Color')
  np.testing.assert_allclose((lo[i], hi[i]), (0.525, 0.975), rtol=1e-6)


def test_rand_augment_params_uniform_over_the_pool_and_the_range():
  ops, values = ra.rand_augment_params(jax.random.key(0), 7000, num_ops=2)
  ops, values = np.asarray(ops), np.asarray(values)
  assert ops.shape == values.shape == (2, 7000)
  counts = np.bincount(ops.ravel(), minlength=14)
  assert counts.min() > 850 and counts.max() < 1150  # 1000 expected per op.
  lo, hi = (np.asarray(r)[ops] for r in ra.value_ranges(10))
  assert ((values >= lo) & (values <= hi + 1e-5)).all()
  posterize = values[ops == ra.OP_NAMES.index('Posterize')]
  assert set(np.floor(posterize).astype(int)) == {4, 5, 6, 7}
  rotate = values[ops == ra.OP_NAMES.index('Rotate')]
  assert rotate.min() < -28 and rotate.max() > 28  # Both signs, full range.


# ---------------------------------------------------------------- cutout


def _painted_box(before, after, fill=ra.FILL):
  """Rows/cols (as index arrays) of the pixels that changed; asserts they form one box of fill."""
  changed = (before != after).any(-1)
  rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
  assert changed.any()
  assert (np.diff(rows) == 1).all() and (np.diff(cols) == 1).all()
  box = np.zeros_like(changed)
  box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
  np.testing.assert_array_equal(changed, box)
  assert (after[box] == np.array(fill, np.uint8)).all()
  np.testing.assert_array_equal(after[~box], before[~box])
  return rows, cols


def _boxes(cutout, batch_size, seed=0):
  """Painted (top, left, height, width) per image, clipped to 32x32, as NumPy arrays."""
  top, left, bottom, right = (np.asarray(b)[:, 0] for b in jax.jit(
      ra.cutout_boxes, static_argnums=(1, 2, 3, 4))(jax.random.key(seed), batch_size, 32, 32,
                                                   cutout))
  top, left = np.maximum(top, 0), np.maximum(left, 0)
  return top, left, np.minimum(bottom, 31) - top + 1, np.minimum(right, 31) - left + 1


def _public_code_boxes(n, rng):
  """MLKD's CutoutAbs written out with NumPy draws, one image at a time; the painted
  span of PIL's rectangle (x0, y0, x1, y1) is int(x0)..int(x1) inclusive (checked with
  Pillow in the next test)."""
  boxes = []
  for _ in range(n):
    v = rng.random_sample() * 0.5 * 32  # Cutout(img, v in [0, 0.5)) -> CutoutAbs(img, v * 32)
    x0, y0 = rng.uniform(32), rng.uniform(32)  # numpy's uniform(low=32, high=1.0)
    x0, y0 = int(max(0, x0 - v / 2.)), int(max(0, y0 - v / 2.))
    x1, y1 = min(32, x0 + v), min(32, y0 + v)
    boxes.append((y0, x0, min(int(y1), 31) - y0 + 1, min(int(x1), 31) - x0 + 1))
  return np.array(boxes).T


@pytest.mark.skipif(not HAS_PIL, reason='needs Pillow')
def test_pil_rectangle_paints_truncated_corners_inclusive():
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for _ in range(200):
    x0, y0 = int(rng.integers(0, 32)), int(rng.integers(0, 32))
    x1, y1 = min(32, x0 + rng.random() * 16), min(32, y0 + rng.random() * 16)
    image = Image.new('RGB', (32, 32))
    ImageDraw.Draw(image).rectangle((x0, y0, x1, y1), (125, 123, 114))
    rows, cols = np.nonzero(np.asarray(image).any(-1))
    assert (rows.min(), rows.max()) == (y0, min(int(y1), 31))
    assert (cols.min(), cols.max()) == (x0, min(int(x1), 31))


def test_public_code_cutout_matches_mlkd_distribution():
  """Joint (top, height) and (left, width) frequencies over 200k draws against the
  reference's: an off-by-one in the side or the centre's range moves a bin by > 5 sigma."""
  n = 200_000
  ours = _boxes("public_code", n)
  theirs = _public_code_boxes(n, np.random.RandomState(1))  # legacy API, as MLKD
  for start, extent in ((0, 2), (1, 3)):  # rows: (top, height); cols: (left, width)
    for boxes in (ours, theirs):
      assert boxes[extent].min() >= 1 and boxes[extent].max() <= 16
    keys = [boxes[start] * 32 + boxes[extent] for boxes in (ours, theirs)]
    p_ours, p_theirs = (np.bincount(k, minlength=33 * 32) / n for k in keys)
    sigma = np.sqrt(np.maximum(p_theirs * (1 - p_theirs), 1 / n) * 2 / n)
    assert (np.abs(p_ours - p_theirs) < 5 * sigma).all()
  # Kept whole at the top/left border: every side floor(v) + 1 in 1..16 appears there.
  unclipped = (ours[0] + ours[2] <= 31) & (ours[1] + ours[3] <= 31)
  assert (ours[2][unclipped] == ours[3][unclipped]).all()  # a square where not clipped
  sides = np.bincount(ours[2][unclipped & (ours[0] == 0)], minlength=17)[1:]
  assert (sides > 0).all()


def test_paper_16px_cutout_is_a_clipped_16px_square_at_a_uniform_centre():
  top, left, height, width = _boxes("paper_16px", 20_000)
  assert height.max() == 16 and width.max() == 16 and height.min() == 8 and width.min() == 8
  # The centre is uniform over 0..31; top = centre - 8, so 8 of 32 centres clip to 0.
  assert abs(np.mean(top == 0) - 9 / 32) < 0.02 and abs(np.mean(left == 0) - 9 / 32) < 0.02


def test_paint_boxes_fills_exactly_the_clipped_box():
  images = np.random.default_rng(3).integers(0, 100, (64, 32, 32, 3)).astype(np.uint8)
  top, left, bottom, right = ra.cutout_boxes(jax.random.key(2), 64, 32, 32)
  out = np.asarray(ra.paint_boxes(images, top, left, bottom, right, fill=(9, 8, 7)))
  for i, (before, after) in enumerate(zip(images, out)):
    rows, cols = _painted_box(before, after, fill=(9, 8, 7))
    assert (rows[0], rows[-1]) == (int(top[i, 0]), min(int(bottom[i, 0]), 31))
    assert (cols[0], cols[-1]) == (int(left[i, 0]), min(int(right[i, 0]), 31))


# ---------------------------------------------------------------- the strong view

_strong_view = jax.jit(ra.strong_view, static_argnames=('num_ops', 'cutout'))


def test_strong_view_is_keyed_per_sample_and_keeps_dtype_shape():
  images = _test_images()
  out = np.asarray(_strong_view(jax.random.key(0), images))
  assert out.dtype == np.uint8 and out.shape == images.shape
  np.testing.assert_array_equal(out, np.asarray(_strong_view(jax.random.key(0), images)))
  assert not np.array_equal(out, np.asarray(_strong_view(jax.random.key(1), images)))
  same = np.repeat(images[:1], 16, axis=0)
  outs = np.asarray(_strong_view(jax.random.key(0), same)).reshape(16, -1)
  assert len(np.unique(outs, axis=0)) == 16


def test_strong_view_is_crop_flip_then_rand_augment_then_cutout():
  images = _test_images()
  key = jax.random.key(5)

  def composed(key, images):
    crop_key, augment_key, cutout_key = jax.random.split(key, 3)
    images = ra.rand_augment(augment_key, random_crop_flip(crop_key, images))
    return ra.paint_boxes(images, *ra.cutout_boxes(cutout_key, 16, 32, 32))

  np.testing.assert_array_equal(_strong_view(key, images), jax.jit(composed)(key, images))
  # Without ops, the paper's variant: a crop/flip with one 16 px square (clipped) painted.
  images = np.random.default_rng(4).integers(1, 100, (16, 32, 32, 3)).astype(np.uint8)
  out = np.asarray(_strong_view(key, images, num_ops=0, cutout="paper_16px"))
  cropped = np.asarray(random_crop_flip(jax.random.split(key, 3)[0], images))
  for before, after in zip(cropped, out):
    rows, cols = _painted_box(before, after)
    assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
    assert len(rows) == 16 or rows[0] == 0 or rows[-1] == 31
    assert len(cols) == 16 or cols[0] == 0 or cols[-1] == 31


def test_strong_view_same_on_8_sharded_devices():
  images = _test_images()
  key = jax.random.key(0)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  sharded = jax.device_put(images, NamedSharding(mesh, P('data')))
  out = jax.jit(ra.strong_view)(key, sharded)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(_strong_view(key, images)))
