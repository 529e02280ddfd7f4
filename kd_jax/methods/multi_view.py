"""The multi-view pipeline of MLKD (Jin et al. CVPR 2023), shared by MLKD and multi-view CSKD.

Each image gives a weak view (crop + flip) and a strong view (crop + flip + RandAugment(2
ops) + Cutout filled with (125, 123, 114)), drawn independently; both go through teacher
and student (Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/dataset/cifar100.py`,
`get_cifar100_train_transform_strong`; the public CSKD code reuses it). The confidence
masks come from the teacher's weak view at T = 1 (`KD_ours.forward_train`). Cutout as the
public code draws it (side 1..16 px, kept whole at the top/left border; METHODS.md 4.3);
`cutout="paper_16px"` is the CSKD paper text's fixed 16 px square.
"""
import dataclasses

import jax
import jax.numpy as jnp

from kd_jax.data import augment, randaugment
from kd_jax.methods.base import Method, cross_entropy, one_of


def median_masks(teacher_logits):
  """(m, c): the sample- and class-confidence fractions of the reference code.

  m = fraction of samples whose max probability is <= the batch median, c = fraction of
  classes whose summed probability is <= the class median (numpy's default linear
  percentile). The code multiplies a scalar loss by the boolean mask and takes the mean,
  so each mask enters as this fraction.
  """
  probs = jax.lax.stop_gradient(jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1))
  confidence = jnp.max(probs, axis=-1)
  class_confidence = jnp.sum(probs, axis=0)
  sample_fraction = jnp.mean(confidence <= jnp.percentile(confidence, 50))
  class_fraction = jnp.mean(class_confidence <= jnp.percentile(class_confidence, 50))
  return sample_fraction, class_fraction


def both_views_cross_entropy(student, labels):
  """CE(weak) + CE(strong): both views are trained on the label."""
  student_weak, student_strong = student
  return cross_entropy(student_weak.logits, labels) + cross_entropy(student_strong.logits, labels)


@dataclasses.dataclass(frozen=True)
class MultiViewMethod(Method):
  """A method whose loss gets (weak, strong) pairs of student and teacher outputs."""
  num_views = 2
  cutout: str = one_of("public_code", randaugment.CUTOUTS)

  def views(self, key, images):
    weak_key, strong_key = jax.random.split(key)
    return [augment.random_crop_flip(weak_key, images),
            randaugment.strong_view(strong_key, images, cutout=self.cutout)]

  def describe_views(self):
    return ("weak: random crop 32 (pad 4) + flip; strong: the same + RandAugment(2 ops) + "
            f"cutout ({self.cutout})")
