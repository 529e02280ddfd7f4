"""Plain cross-entropy: teachers, and students trained alone."""
import dataclasses

from kd_jax.methods.base import Method, cross_entropy


@dataclasses.dataclass(frozen=True)
class CrossEntropy(Method):
  needs_teacher = False

  def loss(self, student, teacher, labels, epoch, aux):
    ce = cross_entropy(student.logits, labels)
    return ce, {"ce": ce}

  def formula(self):
    return "CE"
