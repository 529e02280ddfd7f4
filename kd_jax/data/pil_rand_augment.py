"""timm's RandAugment on the host (Pillow), for DeiT's train transform ('rand-m9-mstd0.5-inc1').

What timm does (timm/data/auto_augment.py `rand_augment_transform`, `RandAugment`,
`AugmentOp`; DeiT and the ND authors' ImageNet/DeiT code use it through
`timm.data.create_transform(auto_augment=..., interpolation='bicubic', mean=ImageNet's)`):

- policy string 'rand-<section>-...': m<int> magnitude (10), n<int> ops per image (2),
  p<float> probability of applying each chosen op (0.5), mstd<float> magnitude noise (0;
  > 100 means uniform), mmax<int> magnitude upper bound (10), inc<int> 1: the 'increasing'
  op set (severity grows with the magnitude), 0 or absent: the original one.
- per image: n ops drawn uniformly *with replacement* from the 15 of the set; each, in turn,
  is skipped with probability 1 - p (timm: `random() > p`); if applied, its magnitude is
  m, or gauss(m, mstd) when mstd > 0, or uniform(0, m) when mstd is infinite, then clipped
  to [0, mmax]; the op's argument comes from the magnitude (`LEVEL_TO_ARG`), with a random
  sign (probability 1/2 each) for rotate, shear, translate and the increasing enhance ops.
- geometric ops fill with the normalisation mean in 0..255 (create_transform's `img_mean`,
  round(255 * mean): (124, 116, 104) for ImageNet's) and resample with create_transform's
  interpolation (bicubic for DeiT); without one, timm picks bilinear or bicubic at random
  per op call, and so does this module.

Differences from timm, on purpose: every draw comes from the `np.random.Generator` passed
in (kd_jax keys each image's augmentation by (seed, epoch, position), for exact resume),
not from Python's and NumPy's global generators, so the same policy gives the same
distribution but not timm's pixels for a given seed; unknown policy sections are a one-line
UserError (timm asserts, or skips sections without a digit), and timm's 't<name>' weighted
op sets (with their Desaturate / GaussianBlur ops) are not implemented.
The op functions below call the same Pillow operations with the same arguments as timm's,
so they give the same pixels (tests/test_pil_rand_augment.py checks each against timm).
"""
import dataclasses
import math
import re
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from kd_jax.errors import UserError

LEVEL_DENOM = 10.0  # magnitude m maps to the fraction m / 10 of each op's range
DEFAULT_FILL = (128, 128, 128)
TRANSLATE_PCT = 0.45  # timm's default range of TranslateXRel/YRel: +-45% of the side
SOLARIZE_ADD_THRESHOLD = 128
INTERPOLATIONS = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR,
                  'bicubic': Image.BICUBIC}
_RANDOM_INTERPOLATION = (Image.BILINEAR, Image.BICUBIC)


# ---------------------------------------------------------------- ops on RGB PIL images


def auto_contrast(img, **_):
  return ImageOps.autocontrast(img)


def equalize(img, **_):
  return ImageOps.equalize(img)


def invert(img, **_):
  return ImageOps.invert(img)


def rotate(img, degrees, fill=DEFAULT_FILL, resample=Image.BICUBIC):
  """Counter-clockwise about the centre, same canvas, corners filled."""
  return img.rotate(degrees, resample=resample, fillcolor=fill)


def _affine(img, matrix, fill, resample):
  return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def shear_x(img, factor, fill=DEFAULT_FILL, resample=Image.BICUBIC):
  return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img, factor, fill=DEFAULT_FILL, resample=Image.BICUBIC):
  return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(img, fraction, fill=DEFAULT_FILL, resample=Image.BICUBIC):
  """Content moves left by fraction * width pixels (right if negative)."""
  return _affine(img, (1, 0, fraction * img.size[0], 0, 1, 0), fill, resample)


def translate_y_rel(img, fraction, fill=DEFAULT_FILL, resample=Image.BICUBIC):
  return _affine(img, (1, 0, 0, 0, 1, fraction * img.size[1]), fill, resample)


def posterize(img, bits, **_):
  """Keeps the top `bits` bits; 8 or more: unchanged; 0: black.

  0 bits is what PosterizeIncreasing asks for at magnitude 10 (with DeiT's m9 mstd0.5, the
  2.3% of its uses whose noisy magnitude is clipped at 10). Pillow of DeiT's and the ND
  authors' time computed it as a black image (no range check; mask ~(2^8 - 1) = 0); Pillow
  13 (installed here) raises ValueError for bits < 1, so timm itself fails there now.
  """
  if bits >= 8:
    return img
  if bits <= 0:
    return img.point([0] * 256 * len(img.getbands()))
  return ImageOps.posterize(img, bits)


def solarize(img, threshold, **_):
  """Inverts the values >= threshold (256: none)."""
  return ImageOps.solarize(img, threshold)


def solarize_add(img, add, threshold=SOLARIZE_ADD_THRESHOLD, **_):
  """Adds `add` (saturating at 255) to the values below `threshold`."""
  table = [min(255, v + add) if v < threshold else v for v in range(256)]
  return img.point(table * len(img.getbands()))


def _enhance(enhancer):
  def op(img, factor, **_):
    return enhancer(img).enhance(factor)
  op.__name__ = enhancer.__name__.lower()
  return op


color = _enhance(ImageEnhance.Color)
contrast = _enhance(ImageEnhance.Contrast)
brightness = _enhance(ImageEnhance.Brightness)
sharpness = _enhance(ImageEnhance.Sharpness)


# ---------------------------------------------------------------- magnitude -> argument
# Each takes the (clipped) magnitude, a draw of the sign (True: negate) and the hparams.


def _signed(value, negate):
  return -value if negate else value


def rotate_arg(level, negate, _):
  return _signed(level / LEVEL_DENOM * 30.0, negate)  # degrees in [-30, 30]


def shear_arg(level, negate, _):
  return _signed(level / LEVEL_DENOM * 0.3, negate)


def translate_rel_arg(level, negate, hparams):
  return _signed(level / LEVEL_DENOM * hparams.get('translate_pct', TRANSLATE_PCT), negate)


def enhance_arg(level, negate, _):
  del negate
  return level / LEVEL_DENOM * 1.8 + 0.1  # [0.1, 1.9]: 1 (no change) at magnitude 5


def enhance_increasing_arg(level, negate, _):
  return max(0.1, 1.0 + _signed(level / LEVEL_DENOM * 0.9, negate))  # 1 at magnitude 0


def posterize_arg(level, negate, _):
  del negate
  return int(level / LEVEL_DENOM * 4)  # bits kept 0..4: stronger at low magnitude


def posterize_increasing_arg(level, negate, hparams):
  return 4 - posterize_arg(level, negate, hparams)  # bits kept 4..0


def solarize_arg(level, negate, _):
  del negate
  return min(256, int(level / LEVEL_DENOM * 256))


def solarize_increasing_arg(level, negate, hparams):
  return 256 - solarize_arg(level, negate, hparams)


def solarize_add_arg(level, negate, _):
  del negate
  return min(128, int(level / LEVEL_DENOM * 110))


@dataclasses.dataclass(frozen=True)
class OpSpec:
  op: Callable
  level_to_arg: Callable | None  # None: the op takes no argument
  signed: bool = False  # draws a random sign
  geometric: bool = False  # takes fill and resample


OPS = {
    'AutoContrast': OpSpec(auto_contrast, None),
    'Equalize': OpSpec(equalize, None),
    'Invert': OpSpec(invert, None),
    'Rotate': OpSpec(rotate, rotate_arg, signed=True, geometric=True),
    'Posterize': OpSpec(posterize, posterize_arg),
    'PosterizeIncreasing': OpSpec(posterize, posterize_increasing_arg),
    'Solarize': OpSpec(solarize, solarize_arg),
    'SolarizeIncreasing': OpSpec(solarize, solarize_increasing_arg),
    'SolarizeAdd': OpSpec(solarize_add, solarize_add_arg),
    'Color': OpSpec(color, enhance_arg),
    'ColorIncreasing': OpSpec(color, enhance_increasing_arg, signed=True),
    'Contrast': OpSpec(contrast, enhance_arg),
    'ContrastIncreasing': OpSpec(contrast, enhance_increasing_arg, signed=True),
    'Brightness': OpSpec(brightness, enhance_arg),
    'BrightnessIncreasing': OpSpec(brightness, enhance_increasing_arg, signed=True),
    'Sharpness': OpSpec(sharpness, enhance_arg),
    'SharpnessIncreasing': OpSpec(sharpness, enhance_increasing_arg, signed=True),
    'ShearX': OpSpec(shear_x, shear_arg, signed=True, geometric=True),
    'ShearY': OpSpec(shear_y, shear_arg, signed=True, geometric=True),
    'TranslateXRel': OpSpec(translate_x_rel, translate_rel_arg, signed=True, geometric=True),
    'TranslateYRel': OpSpec(translate_y_rel, translate_rel_arg, signed=True, geometric=True),
}

# timm's _RAND_TRANSFORMS (inc0) and _RAND_INCREASING_TRANSFORMS (inc1), in timm's order.
RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
            'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
            'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                       'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                       'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


# ---------------------------------------------------------------- the policy


def fill_from_mean(mean) -> tuple[int, ...]:
  """create_transform's `img_mean`: the normalisation mean in 0..255, rounded."""
  return tuple(min(255, round(255 * m)) for m in mean)


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """`num_layers` ops per image from `ops`, each applied with probability `prob`."""
  ops: tuple[str, ...]
  num_layers: int = 2
  magnitude: float = LEVEL_DENOM
  prob: float = 0.5
  magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
  magnitude_max: float = LEVEL_DENOM
  fill: tuple[int, ...] = DEFAULT_FILL
  interpolation: Any = None  # a PIL resample filter; None: bilinear or bicubic at random
  hparams: dict = dataclasses.field(default_factory=dict)  # e.g. translate_pct

  def draw_magnitude(self, rng: np.random.Generator) -> float:
    magnitude = self.magnitude
    if self.magnitude_std == math.inf:
      magnitude = rng.uniform(0.0, magnitude)
    elif self.magnitude_std > 0:
      magnitude = rng.normal(magnitude, self.magnitude_std)
    return float(min(max(magnitude, 0.0), self.magnitude_max))

  def draw(self, rng: np.random.Generator) -> list[tuple[str, Any]]:
    """This image's applied ops as (name, argument or None), in order."""
    chosen = rng.integers(0, len(self.ops), self.num_layers)
    applied = []
    for index in chosen:
      if rng.random() > self.prob:
        continue
      name = self.ops[index]
      spec = OPS[name]
      if spec.level_to_arg is None:
        applied.append((name, None))
        continue
      level = self.draw_magnitude(rng)
      negate = bool(rng.random() > 0.5) if spec.signed else False
      applied.append((name, spec.level_to_arg(level, negate, self.hparams)))
    return applied

  def apply(self, img: Image.Image, ops, rng: np.random.Generator) -> Image.Image:
    for name, arg in ops:
      spec = OPS[name]
      kwargs = {}
      if spec.geometric:
        resample = self.interpolation
        if resample is None:
          resample = _RANDOM_INTERPOLATION[int(rng.integers(2))]
        kwargs = dict(fill=self.fill, resample=resample)
      img = spec.op(img, **kwargs) if arg is None else spec.op(img, arg, **kwargs)
    return img

  def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return self.apply(img, self.draw(rng), rng)


_SECTION = re.compile(r'([a-z]+)(\d.*)$')


def _number(policy, section, parse, value):
  try:
    number = parse(value)
  except ValueError:
    number = None
  if number is None or number < 0:
    raise UserError(f'RandAugment policy {policy!r}: section {section!r} needs a '
                    f'non-negative {"integer" if parse is int else "number"}')
  return number


def rand_augment_transform(config_str: str, hparams: dict | None = None) -> RandAugment:
  """The RandAugment of a timm policy string such as 'rand-m9-mstd0.5-inc1'.

  hparams (as timm's): 'img_mean' (fill colour, 0..255; default grey 128), 'interpolation'
  ('bilinear' / 'bicubic' / a PIL filter; default: random per op), 'translate_pct' (0.45).
  """
  hparams = dict(hparams or {})
  parts = str(config_str).split('-')
  if parts[0] != 'rand':
    raise UserError(f'RandAugment policy {config_str!r} must start with "rand-" (e.g. '
                    '"rand-m9-mstd0.5-inc1")')
  settings = dict(magnitude=LEVEL_DENOM, num_layers=2, prob=0.5, magnitude_std=0.0,
                  magnitude_max=LEVEL_DENOM)
  increasing = False
  for section in parts[1:]:
    match = _SECTION.match(section)
    key, value = match.groups() if match else (section, '')
    if key == 'm':
      settings['magnitude'] = _number(config_str, section, int, value)
    elif key == 'n':
      settings['num_layers'] = _number(config_str, section, int, value)
    elif key == 'p':
      settings['prob'] = _number(config_str, section, float, value)
    elif key == 'mstd':
      std = _number(config_str, section, float, value)
      settings['magnitude_std'] = math.inf if std > 100 else std
    elif key == 'mmax':
      # timm: `magnitude_max or 10`, so mmax0 is the default bound
      settings['magnitude_max'] = _number(config_str, section, int, value) or LEVEL_DENOM
    elif key == 'inc':
      increasing = bool(_number(config_str, section, int, value))
    else:
      raise UserError(f'RandAugment policy {config_str!r}: unknown section {section!r}; valid: '
                      'm<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>')
  interpolation = hparams.pop('interpolation', None)
  if isinstance(interpolation, str):
    if interpolation not in INTERPOLATIONS:
      raise UserError(f'RandAugment interpolation {interpolation!r}; valid: '
                      f'{", ".join(INTERPOLATIONS)}')
    interpolation = INTERPOLATIONS[interpolation]
  fill = tuple(hparams.pop('img_mean', DEFAULT_FILL))
  return RandAugment(ops=RAND_INCREASING_OPS if increasing else RAND_OPS, fill=fill,
                     interpolation=interpolation, hparams=hparams, **settings)
