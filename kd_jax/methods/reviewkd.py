"""ReviewKD (Chen et al. CVPR 2021; METHODS.md 9), as mdistiller/distillers/ReviewKD.py.

total = ce_weight CE + min(1, (e+1)/warmup) reviewkd_weight HCL(ABF(student levels),
teacher levels), e the 0-based epoch (mdistiller counts epochs from 1).

Levels: the teacher's are its pre-ReLU stages after the first plus its pooled feature as
a 1x1 map (mdistiller: `preact_feats[1:] + [pooled_feat]`); the student's are the deepest
as many entries of its stages (`feats`, or `preact_feats` with `student_preact`, mdistiller
STU_PREACT) plus its pooled feature. mdistiller types the widths and sizes per pair
(IN_CHANNELS, OUT_CHANNELS, SHAPES, OUT_SHAPES); here they come from the models' feature
shapes (`review_layout`). mdistiller's code takes the deepest len(IN_CHANNELS) student
entries and pairs its outputs with the teacher levels from the shallow end, so its yamls
always give both sides the same count; when the counts differ (a student with more
stages than the teacher, e.g. wrn_40_2 -> MobileNetV2) kd_jax keeps the deepest levels
of both sides, which is what that pairing needs.

Connectors (the method's extras, trained with the student, never in the final student):
one ABF per level, built shallow to deep and run deep to shallow: 1x1 conv + BN to
mid = min(max_mid_channel, student pooled width) channels; except at the deepest level, the
previous (deeper) ABF's residual is resized to this level's size (nearest) and fused as
x * a0 + r * a1, (a0, a1) = sigmoid(1x1 conv with bias of [x, r]); the result is resized
(nearest) to the teacher level's size when it differs, becomes the next residual, and
goes through 3x3 conv + BN to the teacher level's width. Inits as mdistiller: both
convs kaiming_uniform(a=1), the attention conv PyTorch's default. mdistiller reads
MAX_MID_CHANNEL but builds with 512; `max_mid_channel` defaults to that 512.
"""
import dataclasses
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import losses
from kd_jax.methods.base import Method, cross_entropy, linear_warmup, non_negative, positive
from kd_jax.methods.nd import WithND
from kd_jax.models import layers

# torch.nn.init.kaiming_uniform_(w, a=1): gain 1, bound sqrt(3 / fan_in).
KAIMING_UNIFORM_A1 = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")


class Layout(NamedTuple):
  """mdistiller's per-pair REVIEWKD settings, derived (same orders as its yamls)."""
  in_channels: tuple  # student level widths, shallow -> deep (IN_CHANNELS)
  out_channels: tuple  # teacher level widths, shallow -> deep (OUT_CHANNELS)
  shapes: tuple  # student level sizes, deep -> shallow (SHAPES)
  out_shapes: tuple  # teacher level sizes, deep -> shallow (OUT_SHAPES)


def _as_map(pooled):
  """[B, d] -> [B, 1, 1, d] (mdistiller's pooled_feat.unsqueeze(-1).unsqueeze(-1))."""
  return pooled.reshape(pooled.shape[0], 1, 1, pooled.shape[-1])


def student_levels(features, preact=False):
  """Every candidate student level, shallow -> deep: stages (or pre-ReLU) + pooled."""
  return list(features["preact_stages" if preact else "stages"]) + [_as_map(features["pooled"])]


def teacher_levels(features):
  """The teacher's levels, shallow -> deep: pre-ReLU stages after the first + pooled."""
  return list(features["preact_stages"][1:]) + [_as_map(features["pooled"])]


def review_layout(student_shapes, teacher_shapes, student_preact=False) -> Layout:
  """The layout for a pair, from the features dicts' shapes (`Setup.feature_shapes`)."""
  stages = student_shapes["preact_stages" if student_preact else "stages"]
  student = [s.shape[1:] for s in stages] + [(1, 1, student_shapes["pooled"].shape[-1])]
  teacher = ([s.shape[1:] for s in teacher_shapes["preact_stages"][1:]]
             + [(1, 1, teacher_shapes["pooled"].shape[-1])])
  count = min(len(student), len(teacher))
  student, teacher = student[-count:], teacher[-count:]
  for height, width, _ in student + teacher:
    if height != width:
      raise ValueError(f"ReviewKD needs square feature maps, got {height}x{width}")
  return Layout(in_channels=tuple(c for _, _, c in student),
                out_channels=tuple(c for _, _, c in teacher),
                shapes=tuple(h for h, _, _ in student[::-1]),
                out_shapes=tuple(h for h, _, _ in teacher[::-1]))


def resize_nearest(x, size):
  """F.interpolate(x, size, mode='nearest') for NHWC: source index floor(i * in/out)
  with the scale in float32, clipped to the last row/column (PyTorch's formula)."""
  (_, height, width, _), (out_h, out_w) = x.shape, size
  if (height, width) == (out_h, out_w):
    return x

  def index(size_in, size_out):
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int32)
    return np.minimum(source, size_in - 1)

  return x[:, index(height, out_h)][:, :, index(width, out_w)]


class ABF(nnx.Module):
  """Attention-based fusion of one student level with the deeper levels' residual."""

  def __init__(self, in_channels, mid_channels, out_channels, fuse, rngs):
    kw = dict(dtype=jnp.float32, rngs=rngs)
    self.conv1 = layers.conv(in_channels, mid_channels, 1, kernel_init=KAIMING_UNIFORM_A1, **kw)
    self.bn1 = layers.batch_norm(mid_channels, **kw)
    self.conv2 = layers.conv(mid_channels, out_channels, 3, padding=1,
                             kernel_init=KAIMING_UNIFORM_A1, **kw)
    self.bn2 = layers.batch_norm(out_channels, **kw)
    self.att_conv = (layers.conv(2 * mid_channels, 2, 1, bias=True,
                                 kernel_init=layers.TORCH_DEFAULT,
                                 bias_init=layers.torch_default_bias(2 * mid_channels), **kw)
                     if fuse else None)

  def __call__(self, x, residual, out_shape, train):
    """Returns (output in the teacher level's shape, residual for the next level);
    `out_shape` None keeps the student level's size (detection: the FPN levels match)."""
    x = self.bn1(self.conv1(x), use_running_average=not train)
    if self.att_conv is not None:
      residual = resize_nearest(residual, x.shape[1:3])
      attention = jax.nn.sigmoid(self.att_conv(jnp.concatenate([x, residual], axis=-1)))
      x = x * attention[..., 0:1] + residual * attention[..., 1:2]
    if out_shape is not None:
      x = resize_nearest(x, (out_shape, out_shape))
    return self.bn2(self.conv2(x), use_running_average=not train), x


class ReviewConnectors(nnx.Module):
  """The ABFs of a pair; `abfs` deepest first, as mdistiller's `self.abfs`."""

  def __init__(self, layout: Layout, max_mid_channel, rngs):
    self.in_channels, self.out_channels = layout.in_channels, layout.out_channels
    self.shapes, self.out_shapes = layout.shapes, layout.out_shapes
    mid = min(max_mid_channel, layout.in_channels[-1])
    count = len(layout.in_channels)
    abfs = [ABF(c_in, mid, c_out, index < count - 1, rngs)
            for index, (c_in, c_out) in enumerate(zip(layout.in_channels, layout.out_channels))]
    self.abfs = nnx.List(abfs[::-1])

  def __call__(self, student_maps, train=True):
    """Student levels shallow -> deep in; fused maps in the teacher levels' shapes out."""
    if len(student_maps) != len(self.abfs):
      raise ValueError(f"{len(student_maps)} student levels for {len(self.abfs)} ABFs")
    deep_first = student_maps[::-1]
    output, residual = self.abfs[0](deep_first[0], None, self.out_shapes[0], train)
    results = [output]
    for x, abf, out_shape in zip(deep_first[1:], self.abfs[1:], self.out_shapes[1:]):
      output, residual = abf(x, residual, out_shape, train)
      results.insert(0, output)
    return results


@dataclasses.dataclass(frozen=True)
class ReviewKD(Method):
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  reviewkd_weight: float = non_negative(1.0)
  warmup_epochs: int = positive(20)
  student_preact: bool = False
  max_mid_channel: int = positive(512)

  def extras(self, setup):
    layout = review_layout(setup.feature_shapes(setup.student),
                           setup.feature_shapes(setup.teacher), self.student_preact)
    return ReviewConnectors(layout, self.max_mid_channel, setup.rngs)

  def warmup(self, epoch):
    """min(1, (e+1)/warmup): mdistiller's epoch / WARMUP_EPOCHS with epochs from 1."""
    return linear_warmup(epoch + 1, self.warmup_epochs)

  def loss(self, student, teacher, labels, epoch, aux):
    connectors = aux.extras
    if connectors is None:
      raise ValueError("ReviewKD needs its connectors: aux.extras = method.extras(setup)")
    count = len(connectors.in_channels)
    student_maps = [level.astype(jnp.float32)
                    for level in student_levels(student.features, self.student_preact)[-count:]]
    hcl = losses.hcl(connectors(student_maps, train=True),
                     teacher_levels(teacher.features)[-count:])
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "reviewkd": self.warmup(epoch) * self.reviewkd_weight * hcl}
    return sum(terms.values()), terms

  def formula(self):
    side = "pre-ReLU " if self.student_preact else ""
    return (f"{self.ce_weight:g} CE + min(1, (e+1)/{self.warmup_epochs}) "
            f"{self.reviewkd_weight:g} HCL(ABF(student {side}stages + pooled), "
            f"teacher pre-ReLU stages + pooled)")

  def describe_extras(self, student_dim, teacher_dim):
    del teacher_dim
    mid = min(self.max_mid_channel, student_dim)
    return {"connectors": f"one ABF per level (1x1 conv+BN to {mid} channels, attention "
                          "fusion with the deeper level upsampled nearest, 3x3 conv+BN to "
                          "the teacher level's width and size); trained with the student, "
                          "not saved with it"}


@dataclasses.dataclass(frozen=True)
class ReviewKDND(WithND, ReviewKD):
  """ReviewKD++ (the ND authors' CIFAR/ReviewKD++/train_reviewkd.py, ImageNet/ReviewKD++/):
  CE + min(1, e/warmup) reviewkd_weight HCL + nd_weight ND, epochs counted from 0."""

  def warmup(self, epoch):
    return linear_warmup(epoch, self.warmup_epochs)

  def formula(self):
    return (ReviewKD.formula(self).replace(f"(e+1)/{self.warmup_epochs}",
                                           f"e/{self.warmup_epochs}")
            + f" + {self.nd_formula()}")
