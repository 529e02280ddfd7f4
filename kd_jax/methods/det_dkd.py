"""DKD on a detector (METHODS.md 13; mdistiller detection/model/rcnn.py `rcnn_dkd_loss`,
the ND repository's copy): DKD on the K+1 class logits of the student's sampled RoIs and
the teacher's box head on the same RoIs, the target of a background RoI being class K.

total = detector losses + DKD(alpha, beta, T) = alpha TCKD + beta NCKD, each summed over
the RoIs / N (no warm-up).
"""
import dataclasses

from kd_jax import losses
from kd_jax.methods.base import non_negative, positive
from kd_jax.methods.detection_distill import DetectionDistillation, flat


@dataclasses.dataclass(frozen=True)
class DetDKD(DetectionDistillation):
  """DKD on the RoI logits (cfg.KD.DKD: ALPHA 1, BETA 0.25, T 1 for every pair)."""
  alpha: float = non_negative(1.0)
  beta: float = non_negative(0.25)
  temperature: float = positive(1.0)

  def distillation(self, student, teacher_features, teacher_rois, aux):
    del teacher_features, aux
    dkd = losses.roi_dkd(flat(student["class_logits"]), flat(teacher_rois["class_logits"]),
                         flat(student["roi_classes"]), flat(student["roi_valid"]),
                         self.alpha, self.beta, self.temperature)
    return {"dkd": dkd}

  def formula(self):
    return (f"detector losses + DKD(alpha={self.alpha:g}, beta={self.beta:g}, "
            f"T={self.temperature:g}) on the RoI logits incl. background, over the "
            f"student's sampled RoIs")
