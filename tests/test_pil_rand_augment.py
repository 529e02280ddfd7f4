"""kd_jax.data.pil_rand_augment (timm's RandAugment on the host) and DeiT's host transforms.

Each op and each magnitude -> argument mapping is compared with timm's own functions
(installed with the test extra), the policy parse with timm's `rand_augment_transform`;
the draws (which op, applied or not, magnitude noise, sign) with their distributions; the
bicubic train crop and eval resize with timm / torchvision; then the grain pipeline.
"""
import math

import numpy as np
from PIL import Image
import pytest

from configs import imagenet_kd
from kd_jax import validate
from kd_jax.data import imagenet
from kd_jax.data import pil_rand_augment as ra
from kd_jax.errors import UserError

DEIT = 'rand-m9-mstd0.5-inc1'
FILL = (124, 116, 104)  # round(255 * ImageNet's mean)


def _images():
  """A random RGB image and a smooth one (gradients + a few levels), 40 x 30."""
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  y, x = np.mgrid[0:30, 0:40]
  smooth = np.stack([x * 6, y * 8, (x + y) * 3 % 200 + 20], -1).astype(np.uint8)
  return [Image.fromarray(noise), Image.fromarray(smooth)]


def _timm_aa():
  return pytest.importorskip('timm.data.auto_augment')


# ---------------------------------------------------------------- ops and arguments vs timm

# name -> arguments to try (the range each op's mapping reaches, both ends)
OP_ARGS = {
    'AutoContrast': [None], 'Equalize': [None], 'Invert': [None],
    'Rotate': [-30.0, -13.5, 0.0, 27.0],
    'Posterize': [0, 1, 3, 4, 8], 'Solarize': [0, 26, 128, 256],
    'SolarizeAdd': [0, 55, 99, 110], 'Color': [0.1, 0.55, 1.0, 1.9],
    'Contrast': [0.1, 0.6, 1.9], 'Brightness': [0.1, 1.45, 1.9], 'Sharpness': [0.1, 0.7, 1.9],
    'ShearX': [-0.3, 0.135, 0.3], 'ShearY': [-0.27, 0.3],
    'TranslateXRel': [-0.45, 0.2, 0.405], 'TranslateYRel': [-0.405, 0.45],
}


def test_every_op_matches_timms_pixel_for_pixel():
  aa = _timm_aa()
  ops = {name: spec for name, spec in ra.OPS.items() if name in OP_ARGS}
  assert set(ops) == set(ra.RAND_OPS)  # the increasing set reuses these ops
  for name, spec in ops.items():
    for resample in (Image.BICUBIC, Image.BILINEAR):
      kwargs = dict(fill=FILL, resample=resample) if spec.geometric else {}
      for img in _images():
        for arg in OP_ARGS[name]:
          args = () if arg is None else (arg,)
          ours = np.asarray(spec.op(img, *args, **kwargs))
          if name == 'Posterize' and arg == 0:  # timm + Pillow >= 10 raise; older: black
            np.testing.assert_array_equal(ours, 0)
            continue
          theirs = np.asarray(aa.NAME_TO_OP[name](img, *args, fillcolor=FILL, resample=resample))
          np.testing.assert_array_equal(ours, theirs, err_msg=f'{name}({arg}, {resample})')


LEVELS = [0.0, 0.3, 2.5, 4.5, 5.0, 8.7, 9.0, 9.49, 10.0, 12.0, 15.0]


@pytest.mark.parametrize('negate', [False, True])
def test_magnitude_to_argument_matches_timm(monkeypatch, negate):
  aa = _timm_aa()
  monkeypatch.setattr(aa, '_randomly_negate', (lambda v: -v) if negate else (lambda v: v))
  hparams = dict(translate_const=100, img_mean=FILL)
  for name, spec in ra.OPS.items():
    if spec.level_to_arg is None:
      assert aa.LEVEL_TO_ARG[name] is None
      continue
    for level in LEVELS:
      ours = spec.level_to_arg(level, negate, {})
      theirs, = aa.LEVEL_TO_ARG[name](level, hparams)
      assert ours == theirs and type(ours) is type(theirs), (name, level, ours, theirs)
    # translate_pct from the hparams, as timm's
    if name.startswith('Translate'):
      assert spec.level_to_arg(10, negate, {'translate_pct': 0.3}) == (-0.3 if negate else 0.3)


POLICIES = ['rand-m9-mstd0.5-inc1', 'rand-m9-mstd0.5', 'rand-m7-n3-p0.7-inc0', 'rand-mstd101-m5',
            'rand-m15-mmax15-inc1', 'rand-m9-mmax0', 'rand', 'rand-n1-m0-inc1', 'rand-m9-n2-mstd1']


@pytest.mark.parametrize('policy', POLICIES)
def test_policy_parse_matches_timm(policy):
  aa = _timm_aa()
  timm_hparams = dict(translate_const=100, img_mean=FILL)
  theirs = aa.rand_augment_transform(policy, timm_hparams)
  ours = ra.rand_augment_transform(policy, dict(img_mean=FILL, interpolation='bicubic'))
  assert ours.ops == tuple(op.name for op in theirs.ops)
  assert ours.num_layers == theirs.num_layers and theirs.choice_weights is None
  for op in theirs.ops:
    assert (ours.prob, ours.magnitude, ours.magnitude_std) == (op.prob, op.magnitude,
                                                               op.magnitude_std)
    assert ours.magnitude_max == (op.magnitude_max or ra.LEVEL_DENOM)
  assert ours.fill == FILL and ours.interpolation == Image.BICUBIC


def test_deit_policy_as_timms_create_transform_sets_it_up():
  transforms_factory = pytest.importorskip('timm.data.transforms_factory')
  timm_train = transforms_factory.create_transform(
      224, is_training=True, color_jitter=None, auto_augment=DEIT, interpolation='bicubic',
      mean=imagenet.IMAGENET_MEAN, std=imagenet.IMAGENET_STD).transforms
  crop, flip, randaug = timm_train[:3]
  assert crop.scale == imagenet.CROP_SCALE and crop.ratio == imagenet.CROP_RATIO
  assert flip.p == 0.5
  ours = imagenet.rand_augment(DEIT, 'bicubic', imagenet.IMAGENET_MEAN)
  op = randaug.ops[0]
  assert ours.fill == op.kwargs['fillcolor'] == FILL
  assert ours.interpolation == op.kwargs['resample'] == Image.BICUBIC
  assert ours.ops == tuple(o.name for o in randaug.ops) == ra.RAND_INCREASING_OPS
  assert (ours.num_layers, ours.magnitude, ours.magnitude_std, ours.prob) == (2, 9, 0.5, 0.5)


@pytest.mark.parametrize('policy', ['rand-m9-x3', 'rand-m9-foo', 'rand-mx', 'augmix-m3',
                                    'rand-tweights', 'rand-m9.5', 'rand-n-1', ''])
def test_bad_policies_are_one_line_user_errors(policy):
  with pytest.raises(UserError) as error:
    ra.rand_augment_transform(policy)
  assert '\n' not in str(error.value) and repr(policy) in str(error.value)


# ---------------------------------------------------------------- the draws


def test_ops_applied_with_probability_one_half_uniformly_with_replacement():
  augment = ra.rand_augment_transform(DEIT, dict(img_mean=FILL, interpolation='bicubic'))
  rng = np.random.default_rng(3)
  draws = 6000
  applied = [augment.draw(rng) for _ in range(draws)]
  counts = np.bincount([len(a) for a in applied], minlength=3)
  # Binomial(2, 1/2) per image: 1/4, 1/2, 1/4; 6 sigma bounds (chance failure < 1e-8).
  for k, p in enumerate((0.25, 0.5, 0.25)):
    assert abs(counts[k] - draws * p) < 6 * math.sqrt(draws * p * (1 - p)), counts
  names = [name for a in applied for name, _ in a]
  per_op = np.array([names.count(name) for name in ra.RAND_INCREASING_OPS])
  expected = draws * 2 * 0.5 / 15
  assert np.all(np.abs(per_op - expected) < 6 * math.sqrt(expected)), per_op
  # With replacement: the same op twice in about 1/15 of the images with two ops.
  twice = sum(1 for a in applied if len(a) == 2 and a[0][0] == a[1][0])
  expected_twice = counts[2] / 15
  assert abs(twice - expected_twice) < 6 * math.sqrt(expected_twice), twice


def test_magnitude_noise_is_clipped_gauss_and_signs_are_fair():
  augment = ra.rand_augment_transform(DEIT)
  rng = np.random.default_rng(4)
  n = 20000
  levels = np.array([augment.draw_magnitude(rng) for _ in range(n)])
  # gauss(9, 0.5) clipped to [0, 10]: E = 9 - 0.5 (phi(2) - 2 (1 - Phi(2))), P(10) = 1 - Phi(2)
  tail = 0.5 * math.erfc(2 / math.sqrt(2))
  mean = 9 - 0.5 * (math.exp(-2) / math.sqrt(2 * math.pi) - 2 * tail)
  assert levels.max() == 10 and levels.min() > 6
  assert abs(levels.mean() - mean) < 6 * 0.5 / math.sqrt(n)
  assert abs((levels == 10).mean() - tail) < 6 * math.sqrt(tail * (1 - tail) / n)
  assert abs(levels[levels < 10].std() - 0.47) < 0.03  # the truncated normal's spread
  uniform = ra.rand_augment_transform('rand-m8-mstd200')
  levels = np.array([uniform.draw_magnitude(rng) for _ in range(n)])
  assert levels.min() >= 0 and levels.max() <= 8
  assert abs(levels.mean() - 4) < 6 * 8 / math.sqrt(12 * n)
  fixed = ra.rand_augment_transform('rand-m12')
  assert fixed.draw_magnitude(rng) == 10  # clipped to mmax = 10
  # Signs: rotate's angle is -+ 3 x level, negative half the time.
  rotate = ra.rand_augment_transform('rand-m9-n1-p1')
  angles = [arg for _ in range(4000) for name, arg in rotate.draw(rng) if name == 'Rotate']
  negative = np.mean(np.array(angles) < 0)
  assert len(angles) > 150 and abs(negative - 0.5) < 6 * 0.5 / math.sqrt(len(angles))
  assert set(np.abs(angles)) == {27.0}


def test_apply_runs_the_drawn_ops_in_order():
  augment = ra.rand_augment_transform('rand-m9-n4-p1-inc1', dict(img_mean=FILL,
                                                                  interpolation='bicubic'))
  img = _images()[1]
  for seed in range(5):
    ops = augment.draw(np.random.default_rng(seed))
    expected = img
    for name, arg in ops:
      spec = ra.OPS[name]
      kwargs = dict(fill=FILL, resample=Image.BICUBIC) if spec.geometric else {}
      expected = spec.op(expected, *(() if arg is None else (arg,)), **kwargs)
    np.testing.assert_array_equal(np.asarray(augment(img, np.random.default_rng(seed))),
                                  np.asarray(expected))


# ---------------------------------------------------------------- DeiT's transforms


def _jpeg(array, quality=90):
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def test_deit_train_transform_is_deterministic_per_key():
  image = np.random.default_rng(5).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  augment = imagenet.rand_augment(DEIT, 'bicubic')
  transform = imagenet._TrainAugment(32, seed=7, interpolation='bicubic', augment=augment)
  element = lambda position: {'image': image, 'label': 3, 'index': 9, 'epoch': 0,
                              'position': position}
  first = transform.map(element(0))['image']
  assert first.shape == (32, 32, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, transform.map(element(0))['image'])
  others = [transform.map(element(p))['image'] for p in range(1, 6)]
  assert all(not np.array_equal(first, other) for other in others)
  # Without RandAugment, the same key gives the same crop and flip as 'crop_flip'.
  plain = imagenet._TrainAugment(32, seed=7, interpolation='bicubic').map(element(0))['image']
  crop_flip = imagenet.train_transform(
      image, np.random.default_rng([7, imagenet._AUGMENT_STREAM, 0, 0]), 32, 'bicubic')
  np.testing.assert_array_equal(plain, crop_flip)


def test_train_augment_pickles_for_grain_worker_processes():
  import pickle  # pylint: disable=g-import-not-at-top
  transform = imagenet._TrainAugment(16, 3, 'bicubic', imagenet.rand_augment(DEIT, 'bicubic'))
  element = {'image': _images()[0], 'label': 1, 'index': 2, 'epoch': 1, 'position': 5}
  copy = pickle.loads(pickle.dumps(transform))
  np.testing.assert_array_equal(copy.map(element)['image'], transform.map(element)['image'])


def test_bicubic_crop_matches_timms_resized_crop():
  functional = pytest.importorskip('torchvision.transforms.functional')
  rng = np.random.default_rng(6)
  y, x = np.mgrid[0:120, 0:160]
  smooth = np.stack([x * 1.5, y * 2, (x + y) % 255], -1).astype(np.uint8)
  for array in (rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), smooth):
    picture = Image.fromarray(array)
    for _ in range(4):
      left, top, width, height = imagenet.random_resized_crop_box(rng, 160, 120)
      ours = np.asarray(imagenet.crop_resize(picture, (left, top, left + width, top + height),
                                             48, 'bicubic')).astype(int)
      theirs = np.asarray(functional.resized_crop(
          picture, top, left, height, width, [48, 48],
          functional.InterpolationMode.BICUBIC)).astype(int)
      np.testing.assert_array_equal(ours, theirs)  # whole-pixel boxes: cropped first


def test_bicubic_eval_matches_torchvision_resize_and_center_crop():
  transforms = pytest.importorskip('torchvision.transforms')
  reference = transforms.Compose([
      transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.CenterCrop(224)])
  rng = np.random.default_rng(7)
  for shape in ((300, 400), (333, 250)):
    array = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = imagenet.eval_transform(array, 224, 'bicubic').astype(int)
    theirs = np.asarray(reference(Image.fromarray(array))).astype(int)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1 and diff.mean() < 0.05, shape
  bilinear = imagenet.eval_transform(array, 224).astype(int)
  assert np.abs(bilinear - theirs).mean() > 1  # the setting does change the filter


def test_reduced_jpeg_decode_stays_close_with_bicubic():
  y, x = np.mgrid[0:480, 0:640]
  image = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], -1).astype(np.uint8)
  jpeg = _jpeg(image)
  for seed in range(6):
    fast = imagenet.train_transform(jpeg, np.random.default_rng(seed), 32, 'bicubic')
    full = imagenet.train_transform(image, np.random.default_rng(seed), 32, 'bicubic')
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


# ---------------------------------------------------------------- pipeline and config


def _synthetic_train(**kwargs):
  return imagenet.make_train_iterator(
      4, seed=0, source='synthetic', synthetic_size=12, synthetic_image_shape=(40, 48),
      image_size=24, num_threads=1, process_index=0, process_count=1, num_epochs=1, **kwargs)


def test_train_iterator_with_rand_augment_on_synthetic_source():
  deit = dict(train_augment=DEIT, interpolation='bicubic')
  batches = [b['image'] for b in _synthetic_train(**deit)]
  again = [b['image'] for b in _synthetic_train(**deit)]
  plain = [b['image'] for b in _synthetic_train()]
  assert len(batches) == 3 and batches[0].shape == (4, 24, 24, 3)
  np.testing.assert_array_equal(np.stack(batches), np.stack(again))
  assert not np.array_equal(np.stack(batches), np.stack(plain))
  iterator = _synthetic_train(**deit)
  assert iterator.get_state()['train_augment'] == DEIT
  with pytest.raises(UserError, match='resume with the same data settings'):
    _synthetic_train().set_state(iterator.get_state())
  with pytest.raises(UserError, match='unknown train_augment'):
    _synthetic_train(train_augment='autoaugment')
  with pytest.raises(UserError, match='unknown interpolation'):
    _synthetic_train(interpolation='lanczos')


def test_config_values_are_validated_in_one_line():
  config = imagenet_kd.get_config('smoke')
  assert (config.data.train_augment, config.data.interpolation) == ('crop_flip', 'bilinear')
  for field, value, match in (('train_augment', 'rand-m9-q1', 'unknown section'),
                              ('train_augment', 'randaugment', 'must start with'),
                              ('train_augment', 'flip', 'unknown train_augment'),
                              ('interpolation', 'nearest', 'bilinear, bicubic')):
    bad = config.copy_and_resolve_references()
    bad.data[field] = value
    with pytest.raises(UserError, match=match) as error:
      validate.check(bad)
    assert '\n' not in str(error.value) and f'config.data.{field}=' in str(error.value)
  good = config.copy_and_resolve_references()
  good.data.update(dict(train_augment=DEIT, interpolation='bicubic'))
  validate.check(good)


def test_host_feeder_takes_the_settings_from_config_data():
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  config = imagenet_kd.get_config('smoke')
  config.data.update(dict(synthetic_train_size=16, synthetic_test_size=8, image_size=16,
                          synthetic_image_size=24, num_threads=1))
  config.batch_size = config.eval_batch_size = 8
  default = feeders.create(config, train.data_mesh())
  assert default.state()['train_augment'] == 'crop_flip'
  config.data.update(dict(train_augment=DEIT, interpolation='bicubic'))
  deit = feeders.create(config, train.data_mesh())
  state = deit.state()
  assert (state['train_augment'], state['interpolation']) == (DEIT, 'bicubic')
  first = np.asarray(next(deit.train_batches(0))['image'])
  # Example 0 of the run: the record at position 0 of epoch 0's order, keyed (seed, 0, 0).
  records = imagenet.open_split('train', 'synthetic', synthetic_size=16,
                                synthetic_image_shape=(24, 24))
  order = imagenet._TrainOrder(16, 8, 0, 1, config.seed, 1)
  rng = np.random.default_rng([config.seed, imagenet._AUGMENT_STREAM, 0, 0])
  expected = imagenet.train_transform(records[order[0]['index']]['image'], rng, 16, 'bicubic',
                                      imagenet.rand_augment(DEIT, 'bicubic'))
  np.testing.assert_array_equal(first[0], expected)
  evals = np.asarray(next(deit.eval_batches())['image'])
  validation = imagenet.open_split('validation', 'synthetic', synthetic_size=8,
                                   synthetic_image_shape=(24, 24))
  np.testing.assert_array_equal(evals[0],
                                imagenet.eval_transform(validation[0]['image'], 16, 'bicubic'))


def test_recipe_card_names_the_augmentation():
  from kd_jax.tools import recipe  # pylint: disable=g-import-not-at-top
  config = imagenet_kd.get_config('res34_res18')
  card = dict(recipe.card(config))
  assert card['augmentation'] == ('random resized crop 224 (bilinear) + horizontal flip (host '
                                  'pipeline); eval resize 256 (bilinear) + center crop 224')
  config.data.update(dict(train_augment=DEIT, interpolation='bicubic'))
  assert dict(recipe.card(config))['augmentation'] == (
      "random resized crop 224 (bicubic) + horizontal flip + timm RandAugment "
      "'rand-m9-mstd0.5-inc1' (host pipeline); eval resize 256 (bicubic) + center crop 224")
