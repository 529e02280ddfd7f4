"""The detection distillation forward (kd_jax/methods/detection_distill.py) on two tiny
Faster R-CNNs in one jitted value_and_grad, as the train step runs it: the detector
losses are the student's own, the teacher's box head runs on the student's sampled RoIs
(RCNNKD.forward_pure_roi_head), ReviewKD sees both FPNs, the teacher gets no gradient.
One compile of the whole detector pair (ReviewKD++, the method that uses every path)."""
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax import losses, methods
from kd_jax.detection import backbones, faster_rcnn, fpn
from kd_jax.methods import Aux
from kd_jax.methods import det_reviewkd
from kd_jax.methods.detection_distill import flat
from tests import test_faster_rcnn

NUM_CLASSES = 3
CONFIG = faster_rcnn.DetectorConfig(
    num_classes=NUM_CLASSES, input_format="RGB", pixel_mean=(100.0, 100.0, 100.0),
    pixel_std=(50.0, 50.0, 50.0), pre_nms_topk_train=64, post_nms_topk_train=32,
    rpn_batch_size_per_image=64, roi_batch_size_per_image=32)
FPN_CHANNELS, FC_DIM = 16, 32


def numpy_filled(build, seed):
  """`build()` with NumPy-drawn values (no per-shape XLA compiles of initialisers):
  kernels N(0, 2/fan_in), detectron2's small head inits, norms identity, biases 0."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  values = []
  for path, variable in nnx.to_flat_state(state):
    shape, names = variable.shape, [str(p) for p in path]
    if names[-1] == "kernel":
      head = any(n in ("cls_score", "objectness_logits", "anchor_deltas") for n in names)
      std = 0.01 if head else 0.001 if "bbox_pred" in names else np.sqrt(
          2.0 / np.prod(shape[:-1]))
      value = rng.normal(size=shape) * std
    elif names[-1] in ("scale", "weight", "var", "running_var"):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    values.append((path, variable.replace(jnp.asarray(value, variable.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(values))


def tiny_detector(seed):
  """R18 blocks at widths 8..64, FPN 16 channels, box head 32."""
  def build():
    bottom_up = backbones.ResNet(18, stem_channels=8, res2_channels=8, rngs=nnx.Rngs(seed))
    return faster_rcnn.FasterRCNN(fpn.FPN(bottom_up, out_channels=FPN_CHANNELS,
                                          rngs=nnx.Rngs(seed)), CONFIG, fc_dim=FC_DIM,
                                  rngs=nnx.Rngs(seed))
  return numpy_filled(build, seed)


def synthetic_batch():
  """test_faster_rcnn's batch as (images, the step's targets)."""
  batch = dict(test_faster_rcnn.synthetic_batch())
  return batch.pop("image"), batch


class Trainable(nnx.Module):
  """kd_jax.train.StudentWithExtras's layout: `student` and `extras`."""

  def __init__(self, student, extras):
    self.student, self.extras = student, extras


def _setup():
  student, teacher = tiny_detector(0), tiny_detector(1)
  connectors = numpy_filled(lambda: det_reviewkd.FPNReviewConnectors(
      5, FPN_CHANNELS, FPN_CHANNELS, nnx.Rngs(2)), 2)
  centers = jnp.asarray(np.abs(np.random.default_rng(3).normal(size=(NUM_CLASSES + 1, FC_DIM))),
                        jnp.float32)
  method = methods.create(ml_collections.ConfigDict(methods.defaults(
      "det_reviewkd_nd", reviewkd_weight=1.2, nd_weight=1.5)))
  images, targets = synthetic_batch()
  teacher_def, teacher_state = nnx.split(teacher)

  def loss_fn(trainable, teacher_state, key, images=images, targets=targets):
    teacher = nnx.merge(teacher_def, teacher_state)
    return method.forward(trainable, teacher, [images], targets, 0,
                          Aux(trainable.extras, {"class_centers": centers}, None, key))

  return Trainable(student, connectors), teacher_state, teacher_def, loss_fn, centers


def test_forward_distills_on_the_students_rois():
  """Forward only (the gradients: the slow test below and the component tests)."""
  trainable, teacher_state, teacher_def, loss_fn, centers = _setup()
  images, targets = synthetic_batch()
  key = jax.random.key(4)

  @nnx.jit
  def run(trainable, teacher_state):
    total, terms = loss_fn(trainable, teacher_state, key)
    # The same pieces by hand: the student alone, the teacher on the student's RoIs.
    alone, outputs = trainable.student.losses({"image": images, **targets}, key)
    teacher = nnx.merge(teacher_def, teacher_state)
    teacher_levels = teacher.features(images, targets["image_hw"])
    teacher_box, _, _ = teacher.box_outputs(teacher_levels, outputs["rois"])
    nd = losses.roi_nd(flat(outputs["box_features"]), flat(teacher_box), centers,
                       flat(outputs["roi_classes"]), flat(outputs["roi_valid"]))
    hcl = losses.hcl(trainable.extras(outputs["features"]), teacher_levels)
    return total, terms, alone, nd, hcl

  total, terms, alone, nd, hcl = run(trainable, teacher_state)
  assert set(terms) == set(alone) | {"reviewkd", "nd"}
  for name, value in alone.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-6)
  np.testing.assert_allclose(terms["nd"], 1.0 * nd, rtol=1e-5)  # the released ND weight
  np.testing.assert_allclose(terms["reviewkd"], 1.2 * hcl, rtol=1e-5)
  np.testing.assert_allclose(total, sum(terms.values()), rtol=1e-6)
  assert np.isfinite(float(total)) and float(terms["nd"]) > 0


@pytest.mark.slow
def test_gradients_reach_the_student_and_connectors_only():
  """The teacher is not differentiated (not an argument); the student's box head (ND and
  the detector losses) and every connector (HCL) get gradients."""
  trainable, teacher_state, _, loss_fn, _ = _setup()
  grads = nnx.jit(lambda t, s: nnx.grad(lambda t: loss_fn(t, s, jax.random.key(4))[0])(t))(
      trainable, teacher_state)
  assert np.any(np.asarray(grads["student"]["roi_heads"]["box_head"]["fc2"]["kernel"][...]))
  assert all(np.any(np.asarray(abf["conv2"]["kernel"][...]))
             for abf in grads["extras"]["abfs"].values())


@pytest.mark.slow
def test_one_device_gives_what_eight_give():
  """The loss and gradients of one ReviewKD++ step on a batch of 8 sharded over 8 CPU
  devices equal those on one device (batch-level RoI means, HCL and the connectors'
  BatchNorm all see the global batch)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  trainable, teacher_state, _, loss_fn, _ = _setup()
  images, targets = synthetic_batch()
  images = np.concatenate([images] * 4)
  targets = {name: np.concatenate([value] * 4) for name, value in targets.items()}

  train_def, train_state = nnx.split(trainable)

  def step(train_state, teacher_state, images, targets):
    def loss(trainable):
      return loss_fn(trainable, teacher_state, jax.random.key(4), images, targets)
    (total, terms), grads = nnx.value_and_grad(loss, has_aux=True)(
        nnx.merge(train_def, train_state))
    return total, terms, grads

  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    states = jax.device_put((train_state, teacher_state), replicated)
    batch = jax.device_put((images, targets), NamedSharding(mesh, P("data")))
    results.append(jax.device_get(jax.jit(step)(*states, *batch)))
  (total1, terms1, grads1), (total8, terms8, grads8) = results
  np.testing.assert_allclose(total8, total1, rtol=1e-5)
  for name in terms1:
    np.testing.assert_allclose(terms8[name], terms1[name], rtol=1e-5, atol=1e-7)
  # Float32 sums in another order: per leaf the largest difference relative to the leaf's
  # largest gradient is ~1e-5 (median); the deepest ABF (p6: 1x1 maps, BatchNorm over 8
  # values) reaches ~3e-3. Leaves that feed a BatchNorm which cancels them (abfs[0].conv1's
  # kernel, p5's output bias through it) have round-off gradients, < 1e-4 of the largest:
  # those are compared on the tree's scale.
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
  relative = []
  for one, eight in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
    leaf_max = float(np.abs(one).max())
    atol = 5e-3 * leaf_max if leaf_max > 1e-4 * scale else 1e-3 * scale
    np.testing.assert_allclose(eight, one, rtol=0, atol=atol)
    relative.append(np.abs(eight - one).max() / max(leaf_max, 1e-30))
  assert np.median(relative) < 1e-4
