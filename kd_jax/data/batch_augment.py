"""DeiT's per-batch augmentation, inside the train step (config.augment).

Random erasing of each image, then mixup / cutmix of the batch with label-smoothed
targets (kd_jax.data.mixing), on the normalised images both networks see. Off (all zero)
in every recipe but DeiT's, where the step then hands the method a `mixing.Mixed` instead
of int labels.
"""
import dataclasses

import jax

from kd_jax.data import mixing
from kd_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BatchAugment:
  mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0: off
  cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0: off
  mix_prob: float = 1.0  # chance that a group is mixed at all
  switch_prob: float = 0.5  # chance of cutmix instead of mixup when both are on
  smoothing: float = 0.0  # label smoothing of the targets
  mix_group_size: int = 0  # examples mixed among themselves (the authors' per-GPU batch); 0: all
  erase_prob: float = 0.0  # random erasing ('pixel' mode) per image

  @classmethod
  def from_config(cls, config):
    return cls(**config.augment)

  @property
  def mixes_labels(self):
    return self.mixup > 0 or self.cutmix > 0 or self.smoothing > 0

  @property
  def active(self):
    return self.mixes_labels or self.erase_prob > 0

  def check(self, batch_size, method):
    """One-line UserErrors for settings the batch or the method cannot take (each field's
    own range is checked with the others, kd_jax.validate.RULES)."""
    group = self.mix_group_size or batch_size
    if self.mixes_labels and (batch_size % group or group % 2):
      raise UserError(f"config.augment.mix_group_size={self.mix_group_size} must be even and "
                      f"divide config.batch_size={batch_size}")
    if self.mixes_labels and not method.accepts_mixed_labels:
      raise UserError(f"method {type(method).__name__} takes int labels: config.augment's "
                      "mixup, cutmix and smoothing must be 0 (methods that take mixed "
                      "labels: deit, deit_nd)")

  def __call__(self, key, images, labels):
    """(images, labels) -> (images, labels or mixing.Mixed), keyed by `key`."""
    erase_key, mix_key = jax.random.split(key)
    if self.erase_prob > 0:
      images = mixing.random_erasing(erase_key, images, probability=self.erase_prob)
    group_size = self.mix_group_size or images.shape[0]
    if self.mixup > 0 or self.cutmix > 0:
      images, labels = mixing.mix_batch(
          mix_key, images, labels, mixup_alpha=self.mixup, cutmix_alpha=self.cutmix,
          prob=self.mix_prob, switch_prob=self.switch_prob, smoothing=self.smoothing,
          group_size=group_size)
    elif self.smoothing > 0:
      labels = mixing.Mixed.unmixed(labels, smoothing=self.smoothing, group_size=group_size)
    return images, labels

  def describe(self):
    """The recipe card's line, or '' when off."""
    parts = []
    if self.erase_prob:
      parts.append(f"random erasing p {self.erase_prob:g} (pixel)")
    if self.mixup or self.cutmix:
      group = f"within groups of {self.mix_group_size}" if self.mix_group_size else "batch-wide"
      parts.append(f"mixup {self.mixup:g} / cutmix {self.cutmix:g} (switch "
                   f"{self.switch_prob:g}, p {self.mix_prob:g}, {group})")
    if self.smoothing:
      parts.append(f"label smoothing {self.smoothing:g}")
    return ", ".join(parts) + (" on the device" if parts else "")
