"""DeiT's batch mixing as the ND authors ran it: mixup/cutmix, smoothed soft targets, mixed
class centres, random erasing -- pure jnp functions run inside the jitted train step.

Why on the device: the host then only decodes and crops; mixing a batch is a few
elementwise ops and one reshape, so doing it in the step costs nothing next to the models
and spares a host round-trip (and the host CPU) per batch.

What the authors ran (WangYZ1608/Knowledge-Distillation-via-ND, `ImageNet/DeiT/`):
- `Dataset/data.py` is timm's `Mixup` modified to also return mixed class centres;
  `train_launch_distilled.py` builds it as `Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
  label_smoothing=0.1, num_classes=1000)` (mode 'batch', prob 1, switch_prob 0.5,
  correct_lam) and calls it in each of 8 GPU processes on that process's 256 images.
  So one mixing draw (mixup or cutmix, lam, box) is shared by each group of 256
  consecutive examples and every example is mixed with its mirror in its group
  (`x.flip(0)`): `group_size` here is that per-GPU batch, 2048 / 8 = 256. The groups draw
  independently, so a run gives the same distribution on any device count.
- `mixup_target` (as timm): off = smoothing / C, on = 1 - smoothing + off,
  lam * smooth_onehot(y) + (1 - lam) * smooth_onehot(y_partner).
- `mixup_center` exists only in the ND authors' copy (the target of their ND loss):
  c1 = S @ centres[y] with S[i, i] = on and S[i, j] = off for every other example j of the
  group, i.e. each example's teacher class centre plus every other example's centre with
  weight smoothing / num_classes (num_classes = C, not the group size); then
  lam * c1 + (1 - lam) * flip(c1). `Mixed.mix_rows` computes S @ rows as
  (on - off) * rows + off * group_sum(rows), without the [G, G] matrix.
- Random erasing is timm's `RandomErasing(0.25, mode='pixel', max_count=1, device='cpu')`,
  per image in the dataset transform on the normalised tensor, i.e. before mixing.

Versions: the cutmix box follows the authors' copy (= timm up to 1.0.29): yh = cy +
cut_h // 2, so an unclipped box is 2 * (cut_h // 2) high; timm >= 1.0.30 rounds that half
up. timm's RandomErasing logic is unchanged since January 2020, so the timm the authors
ran in 2023 erased as 1.0.31 does; with max_count = 1 (min_count defaults to 1) it places
exactly one box, area not divided.

Differences, all below float32 rounding or of measure zero: lam and the box/erasing
arithmetic are float32 here (float64 in NumPy/Python there), so a size that lands within
float32 rounding of an integer boundary can come out one pixel different; images are mixed
in float32 and cast back to their dtype (timm mixes in place in the image dtype); an image
is erased when u < probability (timm: not u > probability). Randomness is JAX's, so the
draws differ from a torch run, not their distribution. The group reshapes need the mesh
axis in Auto mode (as kd_jax.train builds it), not Explicit.
"""
import math

import flax
import jax
import jax.numpy as jnp

ERASING_ATTEMPTS = 10  # timm's RandomErasing tries 10 boxes and keeps the first that fits


def flip_within_groups(x, group_size: int):
  """`x.flip(0)` applied to each run of `group_size` consecutive rows of x [B, ...]."""
  grouped = x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])
  return grouped[:, ::-1].reshape(x.shape)


def partner_index(batch_size: int, group_size: int):
  """int32 [B]: the example each one is mixed with (its mirror within its group)."""
  index = jnp.arange(batch_size, dtype=jnp.int32)
  return flip_within_groups(index, group_size)


def _check_groups(batch_size: int, group_size: int):
  if group_size <= 0 or group_size % 2 or batch_size % group_size:
    raise ValueError(f"mixing group_size must be even and divide the batch: got group_size "
                     f"{group_size} for a batch of {batch_size}")


@flax.struct.dataclass
class Mixed:
  """How a batch was mixed: example i is lam[i] of itself and 1 - lam[i] of its partner."""
  labels: jax.Array  # int32 [B], the original labels
  lam: jax.Array  # float32 [B], each example's own share (1 = unmixed); equal within a group
  smoothing: float = flax.struct.field(pytree_node=False)
  group_size: int = flax.struct.field(pytree_node=False)

  @classmethod
  def unmixed(cls, labels, *, smoothing: float, group_size: int):
    """No mixing (lam = 1): targets are the smoothed one-hots, rows still get S @ rows."""
    _check_groups(labels.shape[0], group_size)
    return cls(labels=labels.astype(jnp.int32), lam=jnp.ones(labels.shape, jnp.float32),
               smoothing=smoothing, group_size=group_size)

  def _on_off(self, num_classes: int):
    off = self.smoothing / num_classes
    return 1.0 - self.smoothing + off, off

  def partner(self, x):
    """x [B, ...] reordered so row i holds row i's partner's value."""
    return flip_within_groups(x, self.group_size)

  def _mix(self, mine):
    lam = self.lam.reshape(-1, *([1] * (mine.ndim - 1)))
    return mine * lam + self.partner(mine) * (1.0 - lam)

  def targets(self, num_classes: int):
    """float32 [B, C]: the authors' (and timm's) `mixup_target`; rows sum to 1."""
    on, off = self._on_off(num_classes)
    one_hot = self.labels[:, None] == jnp.arange(num_classes, dtype=jnp.int32)
    return self._mix(jnp.where(one_hot, jnp.float32(on), jnp.float32(off)))

  def mix_rows(self, rows, num_classes: int):
    """[B, d] float32: the authors' `mixup_center` of per-example rows (the teacher's
    class centre of each example's label); num_classes sets off = smoothing / C."""
    on, off = self._on_off(num_classes)
    rows = rows.astype(jnp.float32)
    grouped = rows.reshape(-1, self.group_size, rows.shape[-1])
    group_sum = jnp.broadcast_to(grouped.sum(axis=1, keepdims=True), grouped.shape)
    smoothed = ((on - off) * grouped + off * group_sum).reshape(rows.shape)  # S @ rows
    return self._mix(smoothed)


@flax.struct.dataclass
class MixDraws:
  """Each group's random choices (arrays over groups [G]); lam is the Beta draw, before
  the cutmix correction."""
  apply: jax.Array  # bool: mix this group at all (prob)
  use_cutmix: jax.Array  # bool: cutmix, else mixup
  lam: jax.Array  # float32
  center: jax.Array  # int32 [G, 2]: cutmix box centre (row, col), each uniform in [0, size)


def draw_mix(key, num_groups: int, height: int, width: int, *, mixup_alpha: float = 0.8,
             cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5):
  """The random part of `Mixup._params_per_batch` + `rand_bbox`, once per group.

  One Beta draw with a per-group alpha (cutmix's or mixup's): the same distribution as
  timm's two samplers, and one sampler less to compile.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError("mixing needs mixup_alpha > 0 or cutmix_alpha > 0")
  coin_key, lam_key, center_key = jax.random.split(key, 3)
  shape = (num_groups,)
  coins = jax.random.uniform(coin_key, (num_groups, 2))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = coins[:, 1] < switch_prob
  else:
    use_cutmix = jnp.full(shape, cutmix_alpha > 0)
  alpha = jnp.where(use_cutmix, jnp.float32(cutmix_alpha), jnp.float32(mixup_alpha))
  center = jax.random.randint(center_key, (num_groups, 2), 0,
                              jnp.asarray([height, width], jnp.int32), jnp.int32)
  return MixDraws(apply=coins[:, 0] < prob, use_cutmix=use_cutmix,
                  lam=jax.random.beta(lam_key, alpha, alpha, shape, jnp.float32), center=center)


def cutmix_box(lam, center, height: int, width: int):
  """timm's `rand_bbox`: a (H, W) * sqrt(1 - lam) box at `center`, halves floored, clipped.

  Returns int32 (top, bottom, left, right), rows top <= r < bottom, over lam's shape.
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  row, col = center[..., 0], center[..., 1]
  return (jnp.clip(row - cut_h // 2, 0, height), jnp.clip(row + cut_h // 2, 0, height),
          jnp.clip(col - cut_w // 2, 0, width), jnp.clip(col + cut_w // 2, 0, width))


def _box_mask(top, bottom, left, right, height: int, width: int):
  """bool [..., H, W]: True inside each box (bounds broadcast over the leading axes)."""
  rows = jnp.arange(height, dtype=jnp.int32)
  cols = jnp.arange(width, dtype=jnp.int32)
  in_rows = (rows >= top[..., None]) & (rows < bottom[..., None])
  in_cols = (cols >= left[..., None]) & (cols < right[..., None])
  return in_rows[..., :, None] & in_cols[..., None, :]


def apply_mix(images, labels, draws: MixDraws, *, smoothing: float = 0.1, group_size: int):
  """The deterministic part of `Mixup._mix_batch` per group, given its draws.

  images float [B, H, W, C]; returns (mixed images in their dtype, Mixed).
  """
  batch, height, width, _ = images.shape
  _check_groups(batch, group_size)
  lam = jnp.where(draws.apply, draws.lam, 1.0).astype(jnp.float32)  # lam == 1 -> untouched
  top, bottom, left, right = cutmix_box(lam, draws.center, height, width)
  box = _box_mask(top, bottom, left, right, height, width) & draws.use_cutmix[:, None, None]
  box_area = ((bottom - top) * (right - left)).astype(jnp.float32)
  lam = jnp.where(draws.use_cutmix, 1.0 - box_area / (height * width), lam)  # correct_lam

  # One weight per pixel of each image's own share: lam (mixup) or 0 in the box, 1 outside
  # (cutmix, exact: x * 1 + y * 0 = x); one pass that reads each image and its partner once.
  own = jnp.where(draws.use_cutmix[:, None, None], (~box).astype(jnp.float32),
                  lam[:, None, None])[:, None, :, :, None]
  grouped = images.astype(jnp.float32).reshape(-1, group_size, *images.shape[1:])
  mixed = grouped * own + grouped[:, ::-1] * (1.0 - own)
  return (mixed.reshape(images.shape).astype(images.dtype),
          Mixed(labels=labels.astype(jnp.int32), lam=jnp.repeat(lam, group_size),
                smoothing=smoothing, group_size=group_size))


def mix_batch(key, images, labels, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
              prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1,
              group_size: int):
  """The authors' Mixup in 'batch' mode, drawn independently for each group of
  `group_size` consecutive examples (their per-GPU batch). Returns (images, Mixed)."""
  batch, height, width, _ = images.shape
  _check_groups(batch, group_size)
  draws = draw_mix(key, batch // group_size, height, width, mixup_alpha=mixup_alpha,
                   cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
  return apply_mix(images, labels, draws, smoothing=smoothing, group_size=group_size)


@flax.struct.dataclass
class ErasingDraws:
  """Uniform [0, 1) draws behind timm's `RandomErasing._erase`, per image [B] and box."""
  erase: jax.Array  # [B]: erase the image if < probability
  area: jax.Array  # [B, count, attempts]: target area fraction
  log_aspect: jax.Array  # [B, count, attempts]
  top: jax.Array  # [B, count]: offset among the H - h + 1 positions
  left: jax.Array  # [B, count]


def draw_erasing(key, batch_size: int, count: int = 1):
  """All of RandomErasing's uniforms from one sampler (one to compile)."""
  tries = ERASING_ATTEMPTS
  u = jax.random.uniform(key, (batch_size, 1 + count * (2 * tries + 2)))
  per_box = u[:, 1:].reshape(batch_size, count, 2 * tries + 2)
  return ErasingDraws(erase=u[:, 0], area=per_box[..., :tries],
                      log_aspect=per_box[..., tries:2 * tries], top=per_box[..., 2 * tries],
                      left=per_box[..., 2 * tries + 1])


def erasing_boxes(draws: ErasingDraws, height: int, width: int, *, probability: float = 0.25,
                  min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                  max_aspect: float | None = None):
  """timm's box choice: per box, 10 attempts of area U(min, max) * H * W / count, aspect
  exp(U(log min, log max)), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect));
  the first with h < H and w < W is placed at top ~ randint[0, H - h], left ~ [0, W - w].

  Returns int32 (top, left, h, w), each [B, count]; h = w = 0 where nothing is erased.
  """
  count = draws.area.shape[1]
  log_lo, log_hi = math.log(min_aspect), math.log(max_aspect or 1 / min_aspect)
  target_area = (min_area + (max_area - min_area) * draws.area) * (height * width / count)
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * draws.log_aspect)
  h = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)  # round half to even,
  w = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)  # as Python's round
  fits = (w < width) & (h < height)
  first = jnp.argmax(fits, axis=-1)[..., None]
  erase = (draws.erase < probability)[:, None] & fits.any(axis=-1)
  h = jnp.where(erase, jnp.take_along_axis(h, first, axis=-1)[..., 0], 0)
  w = jnp.where(erase, jnp.take_along_axis(w, first, axis=-1)[..., 0], 0)
  # randint[0, H - h] from a uniform; the min guards u * n rounding up to n in float32
  top = jnp.minimum(jnp.floor(draws.top * (height - h + 1)).astype(jnp.int32), height - h)
  left = jnp.minimum(jnp.floor(draws.left * (width - w + 1)).astype(jnp.int32), width - w)
  return top, left, h, w


def erase(images, boxes, noise):
  """Fills each image's boxes (top, left, h, w [B, count]) with `noise` [B, H, W, C]."""
  _, height, width, _ = images.shape
  top, left, h, w = boxes
  mask = _box_mask(top, top + h, left, left + w, height, width).any(axis=1)  # [B, H, W]
  return jnp.where(mask[..., None], noise.astype(images.dtype), images)


def random_erasing(key, images, *, probability: float = 0.25, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: float | None = None, count: int = 1):
  """timm's `RandomErasing(mode='pixel', min_count=max_count=count)` on each image of a
  normalised float batch [B, H, W, C]: boxes of per-pixel, per-channel N(0, 1) noise."""
  batch, height, width, _ = images.shape
  draw_key, noise_key = jax.random.split(key)
  boxes = erasing_boxes(draw_erasing(draw_key, batch, count), height, width,
                        probability=probability, min_area=min_area, max_area=max_area,
                        min_aspect=min_aspect, max_aspect=max_aspect)
  # One noise field serves all boxes: where boxes overlap timm redraws, still i.i.d. N(0, 1).
  return erase(images, boxes, jax.random.normal(noise_key, images.shape, jnp.float32))
