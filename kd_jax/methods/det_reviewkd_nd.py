"""ReviewKD++ on a detector (the ND authors' `NDReviewKD`, METHODS.md 13;
Detection/model/rcnn.py): ReviewKD on p2..p6 plus ND on the student's sampled RoIs.

total = detector losses + reviewkd_weight HCL(ABF(student p2..p6), teacher p2..p6)
        + w_nd ND(RoI box features, class centres)

The yamls set NDReviewKD.ND_WEIGHT (R18-R101 1.5, R50-R101 1.0, MV2-R50 1.5), but the
released RCNNKD builds its one DirectNormLoss from NDKD.ND_WEIGHT, which no ReviewKD++
yaml sets (default 1.0): with `nd_weight_as_released` (the default) w_nd is that 1.0;
without it, the yaml's `nd_weight`.
"""
import dataclasses

from kd_jax.methods.base import non_negative
from kd_jax.methods.det_reviewkd import DetReviewKD, review_term
from kd_jax.methods.detection_distill import WithClassCenters, roi_nd

RELEASED_ND_WEIGHT = 1.0  # cfg.KD.NDKD.ND_WEIGHT's default, what the released code uses


@dataclasses.dataclass(frozen=True)
class DetReviewKDND(DetReviewKD, WithClassCenters):
  """ReviewKD++: HCL on the FPN levels + ND on the RoI box features."""
  uses_rois = True
  nd_weight: float = non_negative(1.0)  # NDReviewKD.ND_WEIGHT of the yaml
  nd_weight_as_released: bool = True

  @property
  def effective_nd_weight(self):
    return RELEASED_ND_WEIGHT if self.nd_weight_as_released else self.nd_weight

  def distillation(self, student, teacher_features, teacher_rois, aux):
    review = review_term(student, teacher_features, aux.extras)
    nd = roi_nd(student, teacher_rois, aux.frozen["class_centers"])
    return {"reviewkd": self.reviewkd_weight * review, "nd": self.effective_nd_weight * nd}

  def formula(self):
    released = (f" (the released code's NDKD.ND_WEIGHT; the yaml says {self.nd_weight:g})"
                if self.nd_weight_as_released and self.nd_weight != RELEASED_ND_WEIGHT else "")
    return (f"detector losses + {self.reviewkd_weight:g} HCL(ABF(student p2-p6), teacher "
            f"p2-p6) + {self.effective_nd_weight:g}{released} ND(RoI box features; "
            f"{self.describe_centers()}), over the student's sampled RoIs")
