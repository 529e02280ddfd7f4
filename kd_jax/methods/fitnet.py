"""FitNet, hints for thin deep nets (Romero et al. 2015; METHODS.md 9; mdistiller
distillers/FitNet.py and distillers/_common.py's ConvReg).

total = ce_weight * CE + feat_weight * mean((ConvReg(s_h) - t_h)^2)
with s_h, t_h the stage maps `hint_layer` (2) after their ReLU (mdistiller's `feats`, not
`preact_feats`) and the MSE a mean over every element (F.mse_loss). ConvReg, the method's
extras, maps the student's hint to the teacher's shape, chosen from the two maps' heights
as mdistiller does: H_s = 2 H_t: conv 3x3 stride 2 pad 1; 2 H_s = H_t: transposed conv 4x4
stride 2 pad 1; H_s >= H_t: conv (1 + H_s - H_t) x (1 + W_s - W_t); then BatchNorm (train
mode: batch statistics) and ReLU. Convs with bias and PyTorch's default init, as mdistiller
leaves them. No warm-up; mdistiller's cfg.py: CE 1, FEAT 100, HINT_LAYER 2.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from kd_jax.errors import UserError
from kd_jax.methods.base import Method, cross_entropy, non_negative
from kd_jax.models import layers


class ConvReg(nnx.Module):
  """mdistiller's ConvReg on NHWC maps: student hint [B, H_s, W_s, C_s] -> teacher shape."""

  def __init__(self, student_shape, teacher_shape, rngs):
    (_, s_h, s_w, s_c), (_, t_h, t_w, t_c) = student_shape, teacher_shape
    common = dict(use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    if s_h == 2 * t_h:
      self.kind, kernel, strides, padding = "conv", (3, 3), (2, 2), ((1, 1), (1, 1))
    elif 2 * s_h == t_h:
      self.kind = "transposed"
    elif s_h >= t_h:
      self.kind, kernel, strides, padding = "conv", (1 + s_h - t_h, 1 + s_w - t_w), (1, 1), "VALID"
    else:
      raise UserError(f"FitNet cannot map a {s_h}x{s_w} student hint to a {t_h}x{t_w} "
                      "teacher hint (as mdistiller's ConvReg); choose config.method.hint_layer")
    if self.kind == "conv":
      fan_in = kernel[0] * kernel[1] * s_c
      self.conv = nnx.Conv(s_c, t_c, kernel, strides=strides,
                           padding=padding, kernel_init=layers.TORCH_DEFAULT,
                           bias_init=layers.torch_default_bias(fan_in), **common)
    else:
      # PyTorch's ConvTranspose2d(k=4, s=2, p=1): a conv of the 2x-dilated input padded
      # k-1-p = 2 on each side. With transpose_kernel the kernel is (4, 4, C_t, C_s), the
      # PyTorch weight (C_s, C_t, 4, 4) transposed, and fan_in (C_t * 16) is PyTorch's.
      self.conv = nnx.ConvTranspose(s_c, t_c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                    transpose_kernel=True, kernel_init=layers.TORCH_DEFAULT,
                                    bias_init=layers.torch_default_bias(16 * t_c), **common)
    self.bn = layers.batch_norm(t_c, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x, train=True):
    x = self.conv(x.astype(jnp.float32))
    return jax.nn.relu(self.bn(x, use_running_average=not train))


@dataclasses.dataclass(frozen=True)
class FitNet(Method):
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(100.0)
  hint_layer: int = non_negative(2)

  def _hint(self, features, who):
    stages = features["stages"]
    if self.hint_layer >= len(stages):
      raise UserError(f"config.method.hint_layer={self.hint_layer}: the {who} has "
                      f"{len(stages)} stages (0..{len(stages) - 1})")
    return stages[self.hint_layer]

  def extras(self, setup):
    """The regressor from the two models' hint shapes (setup.feature_shapes)."""
    student_shape = self._hint(setup.feature_shapes(setup.student), "student").shape
    teacher_shape = self._hint(setup.feature_shapes(setup.teacher), "teacher").shape
    return ConvReg(student_shape, teacher_shape, setup.rngs)

  def loss(self, student, teacher, labels, epoch, aux):
    hint = aux.extras(self._hint(student.features, "student"), train=True)
    target = jax.lax.stop_gradient(self._hint(teacher.features, "teacher").astype(jnp.float32))
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "fitnet": self.feat_weight * jnp.mean(jnp.square(hint - target))}
    return sum(terms.values()), terms

  def describe_extras(self, student_dim, teacher_dim):
    del student_dim, teacher_dim
    return {"regressor": f"ConvReg on stage {self.hint_layer}: conv (3x3 stride 2, transposed "
                         "4x4 stride 2 or (1+dH)x(1+dW), by the hint sizes) -> BatchNorm -> "
                         "ReLU to the teacher's channels; not saved with the student"}

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.feat_weight:g} MSE(ConvReg(student stage "
            f"{self.hint_layer}), teacher stage {self.hint_layer})")
