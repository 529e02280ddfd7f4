"""KD++ on a detector (the ND authors' `NDKD`, METHODS.md 13; Detection/model/rcnn.py
`rcnn_ndkd_loss`, model/utils.py `DirectNormLoss`, `KDLoss`).

total = detector losses + kd_weight KD(student RoI logits, teacher RoI logits, T)
        + nd_weight ND(student RoI box features, teacher's, class centres)
over the student's sampled RoIs (512 an image, GT appended, background included): the
teacher's box head runs on those RoIs; KD is batchmean over the RoIs of the K+1 logits,
ND (1/N) sum_i [1 - <s_i, c_y/|c_y|> / max(|s_i|, |t_i|)] with K+1 centres. The authors
log the two as one term `loss_ndkd`; here they are logged apart.
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import non_negative, positive
from kd_jax.methods.detection_distill import (DetectionDistillation, WithClassCenters, flat,
                                              roi_nd)


@dataclasses.dataclass(frozen=True)
class DetKDND(DetectionDistillation, WithClassCenters):
  """KD++ (NDKD): KD on the RoI logits + ND on the RoI box features."""
  kd_weight: float = non_negative(1.0)  # NDKD.KD_WEIGHT
  nd_weight: float = non_negative(1.0)  # NDKD.ND_WEIGHT
  temperature: float = positive(1.0)  # NDKD.T

  def distillation(self, student, teacher_features, teacher_rois, aux):
    del teacher_features
    kd = losses.roi_kd(flat(student["class_logits"]), flat(teacher_rois["class_logits"]),
                       flat(student["roi_valid"]), self.temperature)
    nd = roi_nd(student, teacher_rois, aux.frozen["class_centers"])
    return {"kd": self.kd_weight * kd, "nd": self.nd_weight * nd}

  def formula(self):
    return (f"detector losses + {self.kd_weight:g} KD(RoI logits incl. background, "
            f"T={self.temperature:g}) + {self.nd_weight:g} ND(RoI box features; "
            f"{self.describe_centers()}), over the student's sampled RoIs")
