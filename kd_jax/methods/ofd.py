"""OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al. ICCV 2019; METHODS.md 9).

total = ce_weight CE + feat_weight sum_{i<n} ofd(c_i(s_i), t_i, margin_i) / 2^(n-1-i)

as mdistiller `mdistiller/distillers/OFD.py`: s_i, t_i the student's and teacher's
pre-ReLU maps (`preact_stages[1:]`), the last n of each, n the shorter count (its
`_align_list`); c_i a 1x1 conv (no bias, N(0, 2/C_t)) + BatchNorm(C_t) (weight 1, bias 0,
batch statistics) connector, the method's extras; margin_i per teacher channel from the
BatchNorm before that stage's ReLU (model.bn_before_relu(), losses.ofd_margin), the
method's frozen extras; ofd the partial L2 summed over positions and channels, averaged
over the batch (feat_weight 1e-3 is the original code's / 1000).

The teacher runs with BatchNorm on batch statistics (`teacher_bn='batch'`): mdistiller's
OFD.train() puts every child in train mode without re-setting the teacher to eval (the
original authors' code trains with `t_net.train()` too), and the margins assume a
normalised Gaussian response. `teacher_bn='running'` is the eval-mode teacher of every
other method. Margins follow the same last-n alignment as the maps (mdistiller indexes
its margins from the first stage, which differs only when the teacher has more stages
than the student and then fails on the channel count).
"""
import dataclasses

from flax import nnx
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.errors import UserError
from kd_jax.methods.base import Method, cross_entropy, non_negative, one_of
from kd_jax.models import layers


class Connector(nnx.Module):
  """1x1 conv (no bias, normal std sqrt(2 / C_t)) + BatchNorm(C_t), training mode."""

  def __init__(self, student_channels, teacher_channels, rngs):
    kw = dict(dtype=jnp.float32, rngs=rngs)
    self.conv = layers.conv(student_channels, teacher_channels, 1,
                            kernel_init=layers.KAIMING_FAN_OUT, **kw)
    self.bn = layers.batch_norm(teacher_channels, **kw)

  def __call__(self, student_map):
    return self.bn(self.conv(student_map), use_running_average=False)


class OFDExtras(nnx.Module):
  """One connector per distilled stage."""

  def __init__(self, connectors):
    self.connectors = nnx.List(connectors)


def aligned(student_items, teacher_items):
  """mdistiller's _align_list: the last n of each, n the shorter length."""
  count = min(len(student_items), len(teacher_items))
  return list(student_items[len(student_items) - count:]), list(
      teacher_items[len(teacher_items) - count:])


@dataclasses.dataclass(frozen=True)
class OFD(Method):
  """CE + feat_weight * sum of per-stage partial L2, halved per stage from the last."""
  needs_feature_maps = True
  ce_weight: float = non_negative(1.0)
  feat_weight: float = non_negative(1e-3)
  teacher_bn: str = one_of("batch", ("batch", "running"))

  @property
  def teacher_batch_statistics(self):
    return self.teacher_bn == "batch"

  def _stage_shapes(self, setup):
    student, teacher = (setup.feature_shapes(model)["preact_stages"][1:]
                        for model in (setup.student, setup.teacher))
    return aligned(student, teacher)

  def extras(self, setup):
    student, teacher = self._stage_shapes(setup)
    return OFDExtras([Connector(s.shape[-1], t.shape[-1], setup.rngs)
                      for s, t in zip(student, teacher)])

  def frozen(self, setup):
    """Per-stage margins [C_t] from the teacher's BatchNorms before its stages' ReLUs."""
    student, teacher = self._stage_shapes(setup)
    if not hasattr(setup.teacher, "bn_before_relu"):
      raise UserError(f"OFD needs a CNN teacher with a BatchNorm before each stage's ReLU; "
                      f"{type(setup.teacher).__name__} has none")
    bns = setup.teacher.bn_before_relu()
    _, bns = aligned(student, bns)
    margins = tuple(jnp.asarray(losses.ofd_margin(bn.scale[...], bn.bias[...])) for bn in bns)
    for margin, shape in zip(margins, teacher):
      assert margin.shape == shape.shape[-1:], (margin.shape, shape.shape)
    return {"margins": margins}

  def loss(self, student, teacher, labels, epoch, aux):
    ce = cross_entropy(student.logits, labels)
    margins, connectors = aux.frozen["margins"], aux.extras.connectors
    student_maps, teacher_maps = aligned(student.features["preact_stages"][1:],
                                         teacher.features["preact_stages"][1:])
    count = len(margins)
    ofd = jnp.float32(0.0)
    for i, (connector, student_map, teacher_map, margin) in enumerate(
        zip(connectors, student_maps, teacher_maps, margins)):
      value = losses.ofd(connector(student_map.astype(jnp.float32)), teacher_map, margin)
      ofd = ofd + value / 2 ** (count - 1 - i)
    ofd = self.feat_weight * ofd
    return self.ce_weight * ce + ofd, {"ce": self.ce_weight * ce, "ofd": ofd}

  def describe_extras(self, student_dim, teacher_dim):
    del student_dim, teacher_dim
    return {"connectors": "per distilled stage (the last n of preact_stages[1:]): 1x1 conv + "
                          "BatchNorm to the teacher's channels; not saved with the student",
            "margins": "per teacher channel, from the BatchNorm before each stage's ReLU"}

  def formula(self):
    return (f"{self.ce_weight:g} CE + {self.feat_weight:g} sum_i partial-L2_i(connector(s_i), "
            f"t_i, margin_i) / 2^(n-1-i) (pre-ReLU stages)")
