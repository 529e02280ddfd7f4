"""A teacher that wants its inputs normalised differently from the student's.

Teacher and student see the same augmented crop, but a teacher may have been trained with
other mean/std constants (timm's ViTs: 0.5/0.5, "inception"; torchvision CNNs: ImageNet's).
The loop normalises every batch once, with the dataset's constants; `with_input_norm` wraps
the teacher so that it first maps those inputs to its own normalisation:
  x_teacher = (x * data_std + data_mean - teacher_mean) / teacher_std,
a per-channel affine map inside the same jit (train step, teacher evaluation, class means).
"""
import jax.numpy as jnp
from flax import nnx

from kd_jax.errors import UserError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision, DeiT, ND's code
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's ViT (augreg) weights
# config.teacher.input_norm -> (mean, std), or None: the dataset's own, no wrapper.
INPUT_NORMS = {'data': None, 'imagenet': IMAGENET, 'inception': INCEPTION}


class Renormalized(nnx.Module):
  """`model` fed with inputs renormalised from (data_mean, data_std) to (mean, std)."""

  def __init__(self, model, data_mean, data_std, mean, std):
    self.model = model
    self.scale = tuple(float(d / s) for d, s in zip(data_std, std))
    self.shift = tuple(float((dm - m) / s) for dm, m, s in zip(data_mean, mean, std))

  def __call__(self, x, train):
    x = x.astype(jnp.float32) * jnp.asarray(self.scale) + jnp.asarray(self.shift)
    return self.model(x, train=train)


def with_input_norm(model, data_mean, data_std, input_norm):
  """`model` as is when `input_norm` is 'data' or equals the data's constants, else
  wrapped in Renormalized."""
  if input_norm not in INPUT_NORMS:
    raise UserError(f'unknown teacher input_norm {input_norm!r}; valid: '
                    f'{", ".join(INPUT_NORMS)}')
  target = INPUT_NORMS[input_norm]
  if target is None or target == (tuple(data_mean), tuple(data_std)):
    return model
  return Renormalized(model, data_mean, data_std, *target)
