"""kd_jax.data.mixing against NumPy transcriptions of the ND authors' modified timm Mixup
(`ImageNet/DeiT/Dataset/data.py`: mixup_target, mixup_center, rand_bbox,
cutmix_bbox_and_lam, Mixup._mix_batch) and of timm's RandomErasing._erase, driven by the
same draws the JAX code made; distributions of the draws; invariants; 1 vs 8 devices; and
timm itself (torch) with its randomness pinned to those draws."""
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from kd_jax.data import mixing

C = 10  # classes
SMOOTHING = 0.1


# ---- NumPy transcriptions of the authors' code (NCHW, one group = one GPU's batch) ----

def ref_one_hot(labels, num_classes, on, off):
  y = np.full((len(labels), num_classes), off, np.float32)
  y[np.arange(len(labels)), labels] = on
  return y


def ref_mixup_target(labels, num_classes, lam, smoothing):
  off = smoothing / num_classes
  on = 1. - smoothing + off
  y1 = ref_one_hot(labels, num_classes, on, off)
  y2 = ref_one_hot(labels[::-1], num_classes, on, off)
  return y1 * lam + y2 * (1. - lam)


def ref_mixup_center(labels, centre_table, num_classes, lam, smoothing):
  center = centre_table[labels].astype(np.float32)
  off = smoothing / num_classes
  on = 1. - smoothing + off
  sm = np.full((len(labels), len(labels)), off, np.float32)
  np.fill_diagonal(sm, on)
  c1 = sm @ center
  c2 = c1[::-1]
  return c1 * lam + c2 * (1. - lam)


def ref_rand_bbox(img_shape, lam, cy, cx):
  ratio = np.sqrt(1 - lam)
  img_h, img_w = img_shape[-2:]
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  yl = np.clip(cy - cut_h // 2, 0, img_h)
  yh = np.clip(cy + cut_h // 2, 0, img_h)
  xl = np.clip(cx - cut_w // 2, 0, img_w)
  xh = np.clip(cx + cut_w // 2, 0, img_w)
  return yl, yh, xl, xh


def ref_mix_batch(x, apply, use_cutmix, lam, cy, cx):
  """`_params_per_batch` (its outcome given) then `_mix_batch`; returns (x, lam)."""
  x = x.copy()
  lam, use_cutmix = (float(lam), bool(use_cutmix)) if apply else (1., False)
  if lam == 1.:
    return x, 1.
  if use_cutmix:
    yl, yh, xl, xh = ref_rand_bbox(x.shape, lam, cy, cx)
    lam = 1. - (yh - yl) * (xh - xl) / float(x.shape[-2] * x.shape[-1])
    x[:, :, yl:yh, xl:xh] = x[::-1].copy()[:, :, yl:yh, xl:xh]
  else:
    x = x * lam + x[::-1].copy() * (1. - lam)
  return x, lam


def ref_erase(img, draws, noise, probability, min_area, max_area, min_aspect, max_aspect,
              count):
  """timm `RandomErasing._erase` (mode 'pixel') on one CHW image; the draws stand in for
  random.random() / random.uniform(a, b) = a + (b - a) u / random.randint(0, n) = int(u (n+1))."""
  img = img.copy()
  erase_u, area_u, aspect_u, top_u, left_u = draws
  if erase_u > probability:
    return img
  _, img_h, img_w = img.shape
  area = img_h * img_w
  log_ratio = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
  for box in range(count):
    for attempt in range(10):
      target_area = (min_area + (max_area - min_area) * area_u[box, attempt]) * area / count
      aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * aspect_u[box, attempt])
      h = int(round(math.sqrt(target_area * aspect_ratio)))
      w = int(round(math.sqrt(target_area / aspect_ratio)))
      if w < img_w and h < img_h:
        top = int(top_u[box] * (img_h - h + 1))
        left = int(left_u[box] * (img_w - w + 1))
        img[:, top:top + h, left:left + w] = noise[:, top:top + h, left:left + w]
        break
  return img


# ---- helpers: one batch shape and few jit compilations (compiling dominates the run time) ----

B, H, W = 16, 8, 12
_draw_mix = jax.jit(mixing.draw_mix, static_argnums=(1, 2, 3), static_argnames=(
    "mixup_alpha", "cutmix_alpha", "prob", "switch_prob"))
_apply_mix = jax.jit(mixing.apply_mix, static_argnames=("smoothing", "group_size"))


@functools.partial(jax.jit, static_argnames=("probability", "count"))
def _erasing_and_its_draws(key, images, probability, count):
  """random_erasing's output, and the draws and noise it made (same key split)."""
  erased = mixing.random_erasing(key, images, probability=probability, count=count)
  draw_key, noise_key = jax.random.split(key)
  return (erased, mixing.draw_erasing(draw_key, images.shape[0], count),
          jax.random.normal(noise_key, images.shape))


def _batch(batch=B, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, H, W, 3)).astype(np.float32)
  labels = rng.integers(0, C, size=batch).astype(np.int32)
  return images, labels


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


def _draws(seed, num_groups=4):
  """Draws for 4 groups of an H x W batch (the first `num_groups` of them)."""
  draws = _draw_mix(jax.random.key(seed), 4, H, W)
  return jax.tree.map(lambda a: a[:num_groups], draws)


def _mix(images, labels, draws, group_size):
  mixed, info = _apply_mix(jnp.asarray(images), jnp.asarray(labels), draws,
                           smoothing=SMOOTHING, group_size=group_size)
  return np.asarray(mixed), info


# ---- mixup / cutmix against the authors' code ----

@pytest.mark.parametrize("group_size", [4, 16])
def test_mix_batch_matches_authors_code_per_group(group_size):
  images, labels = _batch()
  groups = B // group_size
  seen = set()
  for seed in range(6):
    draws = _draws(seed, groups)
    draws = draws.replace(apply=draws.apply.at[0].set(seed != 0))  # one unmixed group
    mixed, info = _mix(images, labels, draws, group_size)
    targets, lam, draws = np.asarray(info.targets(C)), np.asarray(info.lam), _numpy(draws)
    for g in range(groups):
      rows = slice(g * group_size, (g + 1) * group_size)
      want_x, want_lam = ref_mix_batch(_nchw(images[rows]), draws.apply[g], draws.use_cutmix[g],
                                       draws.lam[g], draws.center[g, 0], draws.center[g, 1])
      np.testing.assert_allclose(_nchw(mixed[rows]), want_x, rtol=0, atol=1e-6)
      np.testing.assert_allclose(lam[rows], want_lam, rtol=0, atol=1e-6)
      np.testing.assert_allclose(targets[rows],
                                 ref_mixup_target(labels[rows], C, want_lam, SMOOTHING),
                                 rtol=0, atol=1e-6)
      seen.add("unmixed" if want_lam == 1. else "cutmix" if draws.use_cutmix[g] else "mixup")
  assert seen == {"unmixed", "cutmix", "mixup"}


def test_mix_rows_matches_explicit_matrix():
  images, labels = _batch()
  table = np.random.default_rng(3).normal(size=(C, 5)).astype(np.float32)
  for group_size in (4, 16):
    _, info = _mix(images, labels, _draws(4, B // group_size), group_size)
    got = np.asarray(info.mix_rows(jnp.asarray(table[labels]), num_classes=C))
    for g in range(B // group_size):
      rows = slice(g * group_size, (g + 1) * group_size)
      want = ref_mixup_center(labels[rows], table, C, float(info.lam[g * group_size]), SMOOTHING)
      np.testing.assert_allclose(got[rows], want, rtol=1e-6, atol=1e-6)


def test_cutmix_box_matches_rand_bbox_on_all_lams():
  lams = np.linspace(0, 1, 201, dtype=np.float32)
  centers = np.stack([np.arange(201) % 9, np.arange(201) % 13], -1).astype(np.int32)
  got = np.stack(jax.jit(mixing.cutmix_box, static_argnums=(2, 3))(lams, centers, 9, 13), -1)
  want = [ref_rand_bbox((9, 13), float(l), cy, cx) for l, (cy, cx) in zip(lams, centers)]
  np.testing.assert_array_equal(got, np.asarray(want))


# ---- invariants ----

def test_unmixed_batch_is_untouched_and_targets_sum_to_one():
  images, labels = _batch()
  draws = _draws(0)
  mixed, info = _mix(images, labels, draws.replace(apply=jnp.zeros(4, bool)), 4)  # prob = 0
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(np.asarray(info.lam), 1.0)
  smoothed = ref_one_hot(labels, C, 1 - SMOOTHING + SMOOTHING / C, SMOOTHING / C)
  np.testing.assert_allclose(np.asarray(info.targets(C)), smoothed)
  unmixed = mixing.Mixed.unmixed(jnp.asarray(labels), smoothing=SMOOTHING, group_size=4)
  np.testing.assert_allclose(np.asarray(unmixed.targets(C)), smoothed)
  assert len(np.unique(np.asarray(draws.lam))) == 4  # drawn per group
  _, info = _mix(images, labels, draws, 4)
  np.testing.assert_allclose(np.asarray(info.targets(C)).sum(-1), 1.0, atol=1e-6)


def test_partners_stay_within_groups():
  np.testing.assert_array_equal(np.asarray(mixing.partner_index(8, 4)), [3, 2, 1, 0, 7, 6, 5, 4])
  np.testing.assert_array_equal(np.asarray(mixing.partner_index(4, 4)), [3, 2, 1, 0])
  images, labels = _batch()
  images[4:8] = 0  # a group of zeros only ever sees its own pixels
  mixed, info = _mix(images, labels, _draws(5), 4)
  np.testing.assert_array_equal(mixed[4:8], 0)
  lam = np.asarray(info.lam).reshape(4, 4)
  np.testing.assert_array_equal(lam, lam[:, :1].repeat(4, 1))  # one lam per group


def test_dtype_is_kept():
  images = jax.ShapeDtypeStruct((B, H, W, 3), jnp.bfloat16)
  labels = jax.ShapeDtypeStruct((B,), jnp.int32)
  mixed, _ = jax.eval_shape(lambda x, y: mixing.mix_batch(jax.random.key(0), x, y, group_size=4),
                            images, labels)
  erased = jax.eval_shape(lambda x: mixing.random_erasing(jax.random.key(0), x), images)
  assert mixed.dtype == erased.dtype == jnp.bfloat16


def test_bad_inputs_are_one_line_errors():
  images, labels = _batch()
  for group_size in (3, 6, 32, 0):
    with pytest.raises(ValueError, match="group_size must be even and divide"):
      mixing.mix_batch(jax.random.key(0), images, labels, group_size=group_size)
  with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
    mixing.mix_batch(jax.random.key(0), images, labels, mixup_alpha=0.0, cutmix_alpha=0.0,
                     group_size=16)


def test_one_and_eight_devices_agree():
  """The batch sharded over 8 devices (groups of 4 span two devices) gives the unsharded
  result (computed with the functions the other tests compiled)."""
  images, labels = _batch()
  centres = np.random.default_rng(2).normal(size=(C, 4)).astype(np.float32)[labels]
  to_erase = np.random.default_rng(0).normal(size=(64, H, W, 3)).astype(np.float32)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))  # as kd_jax.train's
  sharding = NamedSharding(mesh, PartitionSpec("data"))

  @jax.jit
  def sharded(key, x, y, rows, x_to_erase):
    mixed, info = mixing.mix_batch(key, x, y, group_size=4)
    return (mixed, info.targets(C), info.mix_rows(rows, C),
            mixing.random_erasing(key, x_to_erase, probability=0.6))

  key = jax.random.key(11)
  eight = sharded(key, *(jax.device_put(a, sharding)
                         for a in (images, labels, centres, to_erase)))
  assert eight[0].sharding.is_equivalent_to(sharding, 4)
  mixed, info = _mix(images, labels, _draw_mix(key, 4, H, W), 4)
  one = (mixed, info.targets(C), info.mix_rows(centres, C),
         _erasing_and_its_draws(key, to_erase, 0.6, 1)[0])
  for a, b in zip(one, eight):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


# ---- distributions of the draws (N large; tolerances >= 5 standard errors) ----

def test_mix_draw_distributions():
  draws = _numpy(_draw_mix(jax.random.key(7), 40_000, 224, 160, prob=0.3))
  cut, lam = draws.use_cutmix, draws.lam.astype(np.float64)
  assert abs(draws.apply.mean() - 0.3) < 0.015  # se 0.0023
  assert abs(cut.mean() - 0.5) < 0.015  # se 0.0025
  assert abs(lam[~cut].mean() - 0.5) < 0.01  # Beta(0.8, 0.8): sd 0.31, se 0.0022
  assert abs(lam[cut].mean() - 0.5) < 0.01  # Beta(1, 1): sd 0.29
  assert abs(lam[~cut].var() - 0.64 / (2.56 * 2.6)) < 0.006  # 0.0962, se ~0.001
  assert abs(lam[cut].var() - 1 / 12) < 0.006  # 0.0833
  rows, cols = draws.center.T
  assert rows.min() == 0 and rows.max() == 223 and cols.min() == 0 and cols.max() == 159
  assert abs(rows.mean() - 111.5) < 2.0 and abs(cols.mean() - 79.5) < 1.5  # se 0.32, 0.23
  only = jax.jit(lambda key: (mixing.draw_mix(key, 500, H, W, cutmix_alpha=0.0).use_cutmix,
                              mixing.draw_mix(key, 500, H, W, mixup_alpha=0.0).use_cutmix))
  only_mixup, only_cutmix = only(jax.random.key(8))
  assert not np.asarray(only_mixup).any() and np.asarray(only_cutmix).all()


def test_erasing_box_distributions():
  n, size = 20_000, 224
  boxes = jax.jit(lambda key: mixing.erasing_boxes(mixing.draw_erasing(key, n), size, size))
  top, left, h, w = (np.asarray(a)[:, 0] for a in boxes(jax.random.key(9)))
  erased = h > 0
  assert abs(erased.mean() - 0.25) < 0.02  # se 0.003; all 10 tries rejected: ~1e-10
  top, left, h, w = top[erased], left[erased], h[erased], w[erased]
  area = h * w / size**2
  assert area.min() > 0.02 * 0.85 and area.max() < (1 / 3) * 1.1
  assert abs(area.mean() - (0.02 + 1 / 3) / 2) < 0.01  # sd 0.1, se 0.0014
  assert (h / w).min() > 0.3 * 0.9 and (h / w).max() < (1 / 0.3) * 1.1
  assert (h < size).all() and (w < size).all() and (w > 0).all()
  assert (top >= 0).all() and (top + h <= size).all() and top.max() > 0
  assert (left >= 0).all() and (left + w <= size).all() and left.max() > 0


# ---- random erasing against timm's _erase ----

@pytest.mark.parametrize("size,count", [((H, W), 1), ((6, 5), 2)])
def test_random_erasing_matches_timm_transcription(size, count):
  images = np.random.default_rng(0).normal(size=(64, *size, 3)).astype(np.float32)
  got, draws, noise = _numpy(_erasing_and_its_draws(jax.random.key(11), images, 0.6, count))
  changed = 0
  for i in range(64):
    image_draws = [a[i].astype(np.float64) for a in (draws.erase, draws.area, draws.log_aspect,
                                                     draws.top, draws.left)]
    want = ref_erase(_nchw(images[i:i + 1])[0], image_draws, _nchw(noise[i:i + 1])[0],
                     0.6, 0.02, 1 / 3, 0.3, None, count)
    np.testing.assert_array_equal(_nchw(got[i:i + 1])[0], want)
    changed += not np.array_equal(want, _nchw(images[i:i + 1])[0])
  assert 20 < changed < 60


# ---- timm itself (torch), its randomness pinned to our draws ----

class _PinnedNumpy(types.SimpleNamespace):
  """numpy for timm.data.mixup, but np.random is the given stand-in."""

  def __getattr__(self, name):
    return getattr(np, name)


def test_timm_mixup_with_pinned_draws(monkeypatch):
  """timm's Mixup (mode 'batch') on each group. timm >= 1.0.30 rounds the far half of the
  cutmix box up ((cut + 1) // 2); the ND authors' 2023 copy floors it, so the authors'
  rand_bbox stands in for timm's."""
  torch = pytest.importorskip("torch")
  timm_mixup = pytest.importorskip("timm.data.mixup")
  images, labels = _batch()
  for seed in range(4):
    draws = _draws(seed)
    mixed, info = _mix(images, labels, draws, 4)
    targets, draws = np.asarray(info.targets(C)), _numpy(draws)
    for g in range(4):
      answers = [0.0 if draws.apply[g] else 1.0, 0.0 if draws.use_cutmix[g] else 0.9,
                 float(draws.lam[g])]
      pinned = types.SimpleNamespace(rand=lambda *a: answers.pop(0),
                                     beta=lambda *a, **k: answers.pop(0))
      monkeypatch.setattr(timm_mixup, "np", _PinnedNumpy(random=pinned))
      monkeypatch.setattr(timm_mixup, "rand_bbox", lambda shape, lam, g=g, **k: ref_rand_bbox(
          shape, lam, draws.center[g, 0], draws.center[g, 1]))
      mixer = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=SMOOTHING,
                               num_classes=C)
      rows = slice(g * 4, (g + 1) * 4)
      x, target = mixer(torch.from_numpy(_nchw(images[rows]).copy()),
                        torch.from_numpy(labels[rows].astype(np.int64)))
      np.testing.assert_allclose(_nchw(mixed[rows]), x.numpy(), rtol=0, atol=1e-6)
      np.testing.assert_allclose(targets[rows], target.numpy(), rtol=0, atol=1e-6)


def test_timm_random_erasing_with_pinned_draws(monkeypatch):
  torch = pytest.importorskip("torch")
  timm_erasing = pytest.importorskip("timm.data.random_erasing")
  images = np.random.default_rng(0).normal(size=(64, H, W, 3)).astype(np.float32)
  got, draws, noise = _numpy(_erasing_and_its_draws(jax.random.key(11), images, 0.6, 1))
  noise = _nchw(noise)
  for i in range(64):
    state = {"calls": 0, "placed": []}

    def uniform(lo, hi):
      attempt, which = divmod(state["calls"], 2)
      state["calls"] += 1
      return lo + (hi - lo) * float((draws.area if which == 0 else draws.log_aspect)[i, 0, attempt])

    def randint(lo, hi):
      u = (draws.top if not state["placed"] else draws.left)[i, 0]
      state["placed"].append(lo + int(float(u) * (hi - lo + 1)))
      return state["placed"][-1]

    def pixels(per_pixel, rand_color, patch_size, dtype, device):
      assert per_pixel and not rand_color and dtype == torch.float32
      (top, left), (_, h, w) = state["placed"], patch_size
      return torch.from_numpy(noise[i, :, top:top + h, left:left + w].copy())

    monkeypatch.setattr(timm_erasing, "random", types.SimpleNamespace(
        random=lambda: float(draws.erase[i]), uniform=uniform, randint=randint))
    monkeypatch.setattr(timm_erasing, "_get_pixels", pixels)
    eraser = timm_erasing.RandomErasing(0.6, mode="pixel", max_count=1, device="cpu")
    want = eraser(torch.from_numpy(_nchw(images[i:i + 1])[0].copy())).numpy()
    np.testing.assert_array_equal(_nchw(got[i:i + 1])[0], want)
