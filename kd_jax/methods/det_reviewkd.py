"""ReviewKD on a detector (Chen et al. CVPR 2021; METHODS.md 13; dvlab-research/ReviewKD
Detection/model/kd_trans.py and rcnn.py, the ND repository's model/reviewkd.py).

total = detector losses + reviewkd_weight HCL(ABF(student p2..p6), teacher p2..p6)

Connectors (the method's extras, trained with the student, not saved with it): five ABFs
(`build_kd_trans`: 256 in, 256 mid, 256 out), built p2..p6 and run p6 -> p2: 1x1 conv +
BN; except at p6, the deeper level's residual resized (nearest) to this level's size and
fused by a sigmoid attention; 3x3 conv + BN. The FPN levels of student and teacher have
the same sizes, so nothing is resized to the teacher's. HCL per level: MSE at full size +
MSE of 4x4 / 2x2 / 1x1 adaptive average pools (weights 1/2, 1/4, 1/8, those >= the level's
height skipped), normalised by the weights used; summed over the five levels.
The connectors' BatchNorms normalise with the batch's statistics (nn.BatchNorm2d in
train mode).
"""
import dataclasses

from flax import nnx
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.methods.base import non_negative
from kd_jax.methods.detection_distill import DetectionDistillation
from kd_jax.methods.reviewkd import ABF


class FPNReviewConnectors(nnx.Module):
  """build_kd_trans's ReviewKD module over the FPN levels; `abfs` deepest first."""

  def __init__(self, num_levels, in_channels, out_channels, rngs):
    abfs = [ABF(in_channels, in_channels, out_channels, index < num_levels - 1, rngs)
            for index in range(num_levels)]
    self.abfs = nnx.List(abfs[::-1])

  def __call__(self, student_levels, train=True):
    """Student levels p2..p6 in, fused maps p2..p6 out (same sizes)."""
    if len(student_levels) != len(self.abfs):
      raise ValueError(f"{len(student_levels)} student levels for {len(self.abfs)} ABFs")
    deep_first = student_levels[::-1]
    output, residual = self.abfs[0](deep_first[0], None, None, train)
    results = [output]
    for x, abf in zip(deep_first[1:], self.abfs[1:]):
      output, residual = abf(x, residual, None, train)
      results.insert(0, output)
    return results


def review_term(student, teacher_features, connectors):
  """HCL(ABF(student FPN levels), teacher FPN levels), float32."""
  student_levels = [level.astype(jnp.float32) for level in student["features"]]
  return losses.hcl(connectors(student_levels, train=True), list(teacher_features))


@dataclasses.dataclass(frozen=True)
class DetReviewKD(DetectionDistillation):
  """ReviewKD on p2..p6 (cfg.KD.REVIEWKD.LOSS_WEIGHT)."""
  uses_rois = False
  reviewkd_weight: float = non_negative(1.0)

  def extras(self, setup):
    student, teacher = setup.student.backbone, setup.teacher.backbone
    return FPNReviewConnectors(len(student.strides), student.out_channels,
                               teacher.out_channels, setup.rngs)

  def distillation(self, student, teacher_features, teacher_rois, aux):
    del teacher_rois
    return {"reviewkd": self.reviewkd_weight * review_term(student, teacher_features,
                                                           aux.extras)}

  def formula(self):
    return f"detector losses + {self.reviewkd_weight:g} HCL(ABF(student p2-p6), teacher p2-p6)"

  def describe_extras(self, student_dim, teacher_dim):
    del student_dim, teacher_dim
    return {"connectors": "one ABF per FPN level p2-p6 (1x1 conv+BN, attention fusion with "
                          "the deeper level upsampled nearest, 3x3 conv+BN); trained with "
                          "the student, not saved with it"}
