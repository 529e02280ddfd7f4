"""HCL, the hierarchical context loss of ReviewKD (Chen et al. CVPR 2021; METHODS.md 9).

As mdistiller's `hcl_loss` (mdistiller/distillers/ReviewKD.py): for each level, the MSE of
the two maps at full size plus the MSE of both maps adaptive-average-pooled to 4x4, 2x2
and 1x1, skipping every pyramid size >= the map's height; the pooled terms weigh 1/2,
1/4, 1/8 in the order they are kept, and the level's sum is divided by the sum of its
weights. Levels are summed. Maps are NHWC here (NCHW there): every term is a mean over
all elements, so the layout does not change a value.
"""
import jax.numpy as jnp

from kd_jax.losses._numerics import as_float32, frozen
from kd_jax.losses.feature_kd import adaptive_avg_pool

PYRAMID = (4, 2, 1)  # mdistiller's pooled sizes, in order


def _level(student_map, teacher_map):
  if student_map.shape != teacher_map.shape:
    raise ValueError(f"hcl: student map {student_map.shape} and teacher map "
                     f"{teacher_map.shape} must have the same shape")
  height = student_map.shape[1]
  loss, weight, total = jnp.mean(jnp.square(student_map - teacher_map)), 1.0, 1.0
  for size in PYRAMID:
    if size >= height:  # mdistiller tests the height only
      continue
    weight /= 2.0
    pooled_student = adaptive_avg_pool(student_map, (size, size))
    pooled_teacher = adaptive_avg_pool(teacher_map, (size, size))
    loss += weight * jnp.mean(jnp.square(pooled_student - pooled_teacher))
    total += weight
  return loss / total


def hcl(student_maps, teacher_maps):
  """Sum over levels of the pyramid MSE between student and teacher maps [B, H, W, C].

  `student_maps`, `teacher_maps`: sequences of the same length whose i-th maps have the
  same shape (ReviewKD's fused student features are already in the teacher's shapes).
  A 1x1 level (a pooled feature as [B, 1, 1, d]) is a plain MSE.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from kd_jax import losses
    >>> hcl = jax.jit(losses.hcl)
    >>> student = jnp.zeros((1, 2, 2, 1))
    >>> teacher = jnp.array([[1.0, -1.0], [-1.0, 1.0]]).reshape(1, 2, 2, 1)
    >>> print(round(float(hcl([student], [teacher])), 4))  # (MSE 1 + 1/2 * MSE 0 at 1x1) / 1.5
    0.6667
  """
  if len(student_maps) != len(teacher_maps):
    raise ValueError(f"hcl: {len(student_maps)} student levels but {len(teacher_maps)} "
                     "teacher levels")
  total = jnp.zeros((), jnp.float32)
  for student_map, teacher_map in zip(student_maps, teacher_maps):
    student_map, teacher_map = as_float32(student_map, frozen(teacher_map))
    total = total + _level(student_map, teacher_map)
  return total
