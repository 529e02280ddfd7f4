"""What every detector distillation shares (METHODS.md 13; the ND authors'
Detection/model/rcnn.py `RCNNKD.forward`).

One training forward: the student's detectron2 losses and its sampled RoIs
(`FasterRCNN.losses`); the frozen teacher's FPN on the same images; for the RoI methods
the teacher's box head on the *student's* sampled RoIs (`forward_pure_roi_head`); then
the method's distillation terms. total = the four detector losses + the weighted terms
(no warm-up: the authors' detection code has none). The teacher never receives
gradients (stop_gradient on everything it returns) and its FrozenBatchNorms are constants.

The class centres ND needs are frozen extras: the authors' `configs/Center/*.json`
(`centers_file`), or the per-class mean of the teacher's box-head features over the RoIs
it samples on `center_images` training images (their `emb_fea_distribution`),
computed once and cached beside the teacher.
"""
import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.detection import centers as centers_lib
from kd_jax.methods.base import Method, positive

# The ND authors' emb_fea_distribution stops after 30000 iterations of 2 images per GPU.
AUTHORS_CENTER_IMAGES = 60000


def flat(x):
  """[B, S, ...] per-image RoIs -> [B*S, ...], the authors' torch.cat over images."""
  return x.reshape((-1,) + x.shape[2:])


@dataclasses.dataclass(frozen=True)
class DetectionDistillation(Method):
  """Base: student losses + teacher features; subclasses add `distillation` terms."""
  task = "detection"
  uses_rois = True  # the teacher's box head runs on the student's RoIs

  def forward(self, trainable, teacher, views, targets, epoch, aux):
    del epoch
    images = views[0]
    terms, student = trainable.student.losses({"image": images, **targets}, aux.key)
    teacher_features = jax.lax.stop_gradient(teacher.features(images, targets["image_hw"]))
    teacher_rois = None
    if self.uses_rois:
      box_features, class_logits, _ = teacher.box_outputs(teacher_features, student["rois"])
      teacher_rois = jax.lax.stop_gradient({"box_features": box_features,
                                            "class_logits": class_logits})
    terms = terms | self.distillation(student, teacher_features, teacher_rois, aux)
    return sum(terms.values()), terms

  def distillation(self, student, teacher_features, teacher_rois, aux):
    """{term name: weighted value} from the student's training outputs, the teacher's
    FPN levels [p2..p6] and its box-head outputs on the student's RoIs."""
    raise NotImplementedError

  def describe_views(self):
    return ("ResizeShortestEdge (short edge drawn from config.data.short_edges, long edge "
            "<= config.data.max_size) + horizontal flip, on the host; the teacher sees the "
            "same images")


def roi_nd(student, teacher_rois, class_centers):
  """ND on the flattened valid RoIs (losses.roi_nd), background included."""
  return losses.roi_nd(flat(student["box_features"]), flat(teacher_rois["box_features"]),
                       class_centers, flat(student["roi_classes"]), flat(student["roi_valid"]))


def teacher_roi_class_sums(teacher, batch, key, num_classes):
  """Sums [K+1, d] and counts [K+1] of the teacher's box-head features over the RoIs it
  samples on `batch` (its own proposals, GT appended), by sampled class."""
  _, outputs = teacher.losses(batch, key)
  labels = jnp.where(flat(outputs["roi_valid"]), flat(outputs["roi_classes"]), -1)
  return losses.class_sums(jax.lax.stop_gradient(flat(outputs["box_features"])), labels,
                           num_classes + 1)


def teacher_roi_class_centers(teacher, batches, num_classes, seed=0):
  """emb_fea_distribution: per-class mean [K+1, d] of the teacher's box-head features
  over its sampled RoIs of `batches` (a class never sampled gets zeros)."""
  graphdef, state = nnx.split(teacher)
  step = jax.jit(lambda state, batch, key: teacher_roi_class_sums(
      nnx.merge(graphdef, state), batch, key, num_classes))
  sums = None
  for index, batch in enumerate(batches):
    key = jax.random.fold_in(jax.random.key(seed), index)
    batch_sums = step(state, batch, key)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  feature_sums, counts = jax.device_get(sums)
  return feature_sums / counts.clip(min=1.0)[:, None]


@dataclasses.dataclass(frozen=True)
class WithClassCenters(Method):
  """The frozen class centres [K+1, d] of the ND term."""
  centers_file: str = ""  # the authors' configs/Center/*.json; "" = compute from the teacher
  center_images: int = positive(AUTHORS_CENTER_IMAGES)

  def frozen(self, setup):
    num_classes = setup.feeder.info.num_classes
    dim = setup.teacher.roi_heads.box_head.fc2.out_features
    if self.centers_file:
      return {"class_centers": jnp.asarray(
          centers_lib.read_authors_centers(self.centers_file, num_classes + 1, dim))}
    count = math.ceil(self.center_images / setup.feeder.batch_size)
    compute = lambda: teacher_roi_class_centers(
        setup.teacher, setup.feeder.sample_train_batches(count), num_classes)
    centers = setup.cached(f"roi_class_centers_{self.center_images}", (num_classes + 1, dim),
                           compute)
    return {"class_centers": jnp.asarray(centers, jnp.float32)}

  def describe_centers(self):
    source = (f"read from {self.centers_file}" if self.centers_file else
              f"the teacher's mean box-head feature per class over its sampled RoIs of "
              f"{self.center_images} training images")
    return f"class centres (background included): {source}"
