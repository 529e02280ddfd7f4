"""The detector trained alone (METHODS.md 13): detectron2's Faster R-CNN training loss,
loss_rpn_cls + loss_rpn_loc + loss_cls + loss_box_reg, each with weight 1."""
import dataclasses

from kd_jax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Detector(Method):
  """A Faster R-CNN student without a teacher (the detection baseline row)."""
  needs_teacher = False
  task = "detection"

  def forward(self, trainable, teacher, views, targets, epoch, aux):
    del teacher, epoch
    terms, _ = trainable.student.losses({"image": views[0], **targets}, aux.key)
    return sum(terms.values()), terms

  def formula(self):
    return "loss_rpn_cls + loss_rpn_loc + loss_cls + loss_box_reg (detectron2)"

  def describe_views(self):
    return ("ResizeShortestEdge (short edge drawn from config.data.short_edges, long edge "
            "<= config.data.max_size) + horizontal flip, on the host")
