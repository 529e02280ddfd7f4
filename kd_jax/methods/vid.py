"""VID, variational information distillation (Ahn et al. CVPR 2019; METHODS.md 9).

total = ce_weight CE + feat_weight sum_i vid(r_i(pool(s_i)), t_i, log_scale_i)

over the stages i of `stages[1:]` (mdistiller's feats[1:]), paired from the first as
mdistiller's `zip` (a student with more stages than the teacher, an IndexError there,
uses the first as many as the teacher has). pool: a student map larger than the
teacher's is average-pooled to its size (a larger teacher map is pooled inside `vid`).
r_i: 1x1 conv(C_s -> C_t) - ReLU - 1x1 conv - ReLU - 1x1 conv, no bias, PyTorch's default
init; log_scale_i [C_t] starts at log(exp(init_pred_var - eps) - 1), so the variance
softplus(log_scale) + eps starts at init_pred_var. Both are the method's extras.

mdistiller `mdistiller/distillers/VID.py` keeps the log_scales in a Python list, so its
optimizer never sees them and the variance stays at init_pred_var; RepDistiller (whose
runs gave the CRD README's VID numbers) and the paper learn it. kd_jax learns it
(`learn_variance=True`, with weight decay as every parameter); `learn_variance=False` is
mdistiller's fixed variance.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.losses.feature_kd import adaptive_avg_pool
from kd_jax.losses.vid import vid_log_scale
from kd_jax.methods.base import Method, cross_entropy, non_negative, positive
from kd_jax.models import layers


class FixedLogScale(nnx.Variable):
  """A log_scale that is state, not a parameter: no gradient, no weight decay."""


class VIDStage(nnx.Module):
  """One stage's regressor (an nnx.List as nn.Sequential, ReLUs in their slots) and
  per-channel log_scale."""

  def __init__(self, student_channels, teacher_channels, log_scale, learn_variance, rngs):
    kw = dict(kernel_init=layers.TORCH_DEFAULT, dtype=jnp.float32, rngs=rngs)
    self.regressor = nnx.List([
        layers.conv(student_channels, teacher_channels, 1, **kw), jax.nn.relu,
        layers.conv(teacher_channels, teacher_channels, 1, **kw), jax.nn.relu,
        layers.conv(teacher_channels, teacher_channels, 1, **kw)])
    variable = nnx.Param if learn_variance else FixedLogScale
    self.log_scale = variable(jnp.full((teacher_channels,), log_scale, jnp.float32))

  def __call__(self, student_map):
    return layers.sequential(self.regressor, student_map, train=True)


class VIDExtras(nnx.Module):
  """The regressors and log-scales of every stage VID uses."""

  def __init__(self, stages):
    self.stages = nnx.List(stages)


def stage_pairs(student_shapes, teacher_shapes):
  """(student, teacher) shapes of the stages VID pairs: feats[1:], from the first."""
  return list(zip(student_shapes[1:], teacher_shapes[1:]))


@dataclasses.dataclass(frozen=True)
class VID(Method):
  """CE + feat_weight * sum of per-stage VID (module docstring)."""
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(1.0)
  init_pred_var: float = positive(5.0)
  eps: float = positive(1e-5)
  learn_variance: bool = True

  def extras(self, setup):
    student, teacher = (setup.feature_shapes(model)["stages"]
                        for model in (setup.student, setup.teacher))
    log_scale = vid_log_scale(self.init_pred_var, self.eps)
    return VIDExtras([VIDStage(s.shape[-1], t.shape[-1], log_scale, self.learn_variance,
                               setup.rngs) for s, t in stage_pairs(student, teacher)])

  def loss(self, student, teacher, labels, epoch, aux):
    ce = cross_entropy(student.logits, labels)
    vid = jnp.float32(0.0)
    pairs = zip(student.features["stages"][1:], teacher.features["stages"][1:],
                aux.extras.stages)
    for student_map, teacher_map, stage in pairs:
      student_map = student_map.astype(jnp.float32)
      if student_map.shape[1] > teacher_map.shape[1]:
        student_map = adaptive_avg_pool(student_map, teacher_map.shape[1:3])
      vid = vid + losses.vid(stage(student_map), teacher_map, stage.log_scale[...], self.eps)
    vid = self.feat_weight * vid
    return self.ce_weight * ce + vid, {"ce": self.ce_weight * ce, "vid": vid}

  def describe_extras(self, student_dim, teacher_dim):
    del student_dim, teacher_dim
    variance = "learned" if self.learn_variance else "fixed (mdistiller)"
    return {"regressors": "per stage of feats[1:]: 1x1 conv -> ReLU -> 1x1 conv -> ReLU -> "
                          f"1x1 conv to the teacher's channels; per-channel variance {variance}, "
                          f"init {self.init_pred_var:g}; not saved with the student"}

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.feat_weight:g} sum_stages VID(eps={self.eps:g})")
