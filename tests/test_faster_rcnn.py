"""The assembled detector (kd_jax/detection/faster_rcnn.py) on a tiny R18-like network:
one jit'd value_and_grad training step (default suite: one compile), inference and a
short overfit run (slow)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kd_jax.detection import backbones, detectron2_names, faster_rcnn, fpn
from kd_jax.errors import UserError

NUM_CLASSES = 3
CONFIG = faster_rcnn.DetectorConfig(
    num_classes=NUM_CLASSES, input_format='RGB', pixel_mean=(100.0, 100.0, 100.0),
    pixel_std=(50.0, 50.0, 50.0), pre_nms_topk_train=64, post_nms_topk_train=32,
    pre_nms_topk_test=64, post_nms_topk_test=32, rpn_batch_size_per_image=64,
    roi_batch_size_per_image=32, detections_per_image=10)
COLORS = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230]], np.float32)


def tiny_detector(seed=0, config=CONFIG):
  """R18 blocks at widths 8..64, FPN 16 channels, box head 32 (FREEZE_AT 2)."""
  bottom_up = backbones.ResNet(18, stem_channels=8, res2_channels=8, rngs=nnx.Rngs(seed))
  return faster_rcnn.FasterRCNN(fpn.FPN(bottom_up, out_channels=16, rngs=nnx.Rngs(seed + 1)),
                                config, fc_dim=32, rngs=nnx.Rngs(seed + 2))


def numpy_detectron2_state(model, seed=0):
  """detectron2-named random weights at detectron2's init scales, drawn with NumPy (no
  per-shape XLA compiles of random initializers: the default suite stays fast)."""
  rng = np.random.default_rng(seed)
  variables = dict(nnx.iter_graph(model))
  state = {}
  for name, path in detectron2_names.detectron2_names(model).items():
    shape = detectron2_names.torch_shape(variables[path].shape)
    if name.endswith(('running_var', 'norm.weight')):
      state[name] = np.ones(shape, np.float32)
    elif name.endswith(('running_mean', 'bias')):
      state[name] = np.zeros(shape, np.float32)
    else:
      std = (0.01 if 'rpn_head' in name or 'cls_score' in name else
             0.001 if 'bbox_pred' in name else np.sqrt(2.0 / np.prod(shape[1:])))
      state[name] = rng.normal(0, std, shape).astype(np.float32)
  return state


def fast_tiny_detector():
  """tiny_detector's structure, weights loaded by detectron2 name from NumPy."""
  model = nnx.eval_shape(tiny_detector)
  return detectron2_names.load_detectron2_state(model, numpy_detectron2_state(model))


def synthetic_batch():
  """Two 64x64 images (the second 48x56 inside the padding) with coloured rectangles."""
  boxes = np.array([[[4, 6, 30, 40], [34, 10, 60, 28], [0, 0, 0, 0]],
                    [[10, 8, 40, 30], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  classes = np.array([[0, 2, 0], [1, 0, 0]], np.int32)
  valid = np.array([[True, True, False], [True, False, False]])
  image_hw = np.array([[64, 64], [48, 56]], np.int32)
  images = np.full((2, 64, 64, 3), 90.0, np.float32)
  for i in range(2):
    for box, cls, ok in zip(boxes[i], classes[i], valid[i]):
      if ok:
        x1, y1, x2, y2 = box.astype(int)
        images[i, y1:y2, x1:x2] = COLORS[cls]
    images[i, image_hw[i, 0]:], images[i, :, image_hw[i, 1]:] = 0.0, 0.0
  return {'image': images, 'image_hw': image_hw, 'boxes': boxes, 'classes': classes,
          'box_valid': valid}


def _loss_fn(graphdef, rest):
  def loss_fn(params, batch, key):
    losses, outputs = nnx.merge(graphdef, params, rest).losses(batch, key)
    return sum(losses.values()), (losses, outputs)
  return loss_fn


def test_training_step_is_one_jitted_pure_function_with_gradients_for_trainable_only():
  model = fast_tiny_detector()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  step = jax.jit(jax.value_and_grad(_loss_fn(graphdef, rest), has_aux=True))
  batch = synthetic_batch()
  (total, (losses, outputs)), grads = step(params, batch, jax.random.key(0))
  assert set(losses) == {'loss_rpn_cls', 'loss_rpn_loc', 'loss_cls', 'loss_box_reg'}
  for name, value in losses.items():
    assert np.isfinite(value) and value > 0, name
  np.testing.assert_allclose(total, sum(losses.values()), rtol=1e-6)

  # FREEZE_AT 2: stem and res2 are not parameters at all; every parameter gets a gradient
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(grads)]
  names = ['.'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in p) for p in paths]
  assert not [n for n in names if n.startswith(('backbone.bottom_up.stem',
                                                'backbone.bottom_up.res2'))]
  assert any(n.startswith('backbone.bottom_up.res3') for n in names)
  for name, grad in zip(names, jax.tree.leaves(grads)):
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), name

  rois, valid, classes = (np.asarray(outputs[k]) for k in ('rois', 'roi_valid', 'roi_classes'))
  assert rois.shape == (2, 32, 4) and outputs['box_features'].shape == (2, 32, 32)
  assert outputs['class_logits'].shape == (2, 32, NUM_CLASSES + 1)
  assert outputs['box_deltas'].shape == (2, 32, 4 * NUM_CLASSES)
  # real samples first, then padding (fewer candidates than 32 when NMS removed many)
  assert np.all(np.diff(valid.astype(int), axis=1) <= 0) and np.all(valid.sum(axis=1) >= 16)
  assert np.all((classes[valid] >= 0) & (classes[valid] <= NUM_CLASSES))
  assert np.all(classes[~valid] == -1)
  # the appended ground truth makes foreground from the first step: fg first in each image
  for i in range(2):
    fg = classes[i][valid[i]] < NUM_CLASSES
    assert fg[0] and np.all(np.diff(fg.astype(int)) <= 0)
    assert set(classes[i][valid[i]][fg]) <= set(batch['classes'][i][batch['box_valid'][i]])
  assert np.all(np.asarray(outputs['box_features']) >= 0)  # after fc2's ReLU


def test_input_not_a_multiple_of_32_is_a_user_error():
  model = nnx.eval_shape(tiny_detector)
  with pytest.raises(UserError, match='multiple of 32'):
    model.preprocess(jnp.zeros((1, 48, 64, 3)), jnp.array([[48, 64]]))


def test_preprocess_normalizes_in_the_weights_channel_order_and_zeroes_padding():
  model = nnx.eval_shape(tiny_detector)
  images = np.random.default_rng(0).uniform(0, 255, (1, 32, 64, 3)).astype(np.float32)
  out = np.asarray(model.preprocess(images, jnp.array([[20, 40]])))
  np.testing.assert_allclose(out[0, :20, :40], (images[0, :20, :40] - 100.0) / 50.0, rtol=1e-6)
  assert not out[0, 20:].any() and not out[0, :, 40:].any()
  detectron2_default = nnx.eval_shape(lambda: tiny_detector(config=faster_rcnn.DetectorConfig()))
  bgr = np.asarray(detectron2_default.preprocess(images, jnp.array([[32, 64]])))
  np.testing.assert_allclose(bgr[0], images[0, :, :, ::-1] - np.array(
      [103.530, 116.280, 123.675], np.float32), rtol=1e-5)


@pytest.mark.slow
def test_detect_returns_padded_detections_inside_the_image():
  model = fast_tiny_detector()
  batch = synthetic_batch()
  detections = nnx.jit(lambda m, x, hw: m.detect(x, hw))(model, batch['image'],
                                                          batch['image_hw'])
  boxes = np.asarray(detections['boxes'])
  assert boxes.shape == (2, 10, 4)
  valid = np.asarray(detections['valid'])
  assert np.all(np.asarray(detections['scores'])[valid] > 0.05)
  assert np.all(boxes[1][valid[1]][:, [0, 2]] <= 56) and np.all(boxes[1][valid[1]][:, [1, 3]] <= 48)


@pytest.mark.slow
def test_tiny_detector_overfits_one_batch():
  """Adam on one synthetic batch: every loss falls (the network has no normalisation, as
  FrozenBN from scratch, so plain SGD at a useful rate diverges without pretrained
  weights; Adam 1e-3 converges). The box loss may first rise: better proposals bring more
  foreground RoIs into its sum."""
  model = fast_tiny_detector()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adam(1e-3)
  grad_fn = jax.value_and_grad(_loss_fn(graphdef, rest), has_aux=True)

  @jax.jit
  def train_step(params, opt_state, batch, key):
    (_, (losses, _)), grads = grad_fn(params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  batch, opt_state, history = synthetic_batch(), optimizer.init(params), []
  for i in range(60):
    params, opt_state, losses = train_step(params, opt_state, batch, jax.random.key(i))
    history.append({k: float(v) for k, v in losses.items()})
  total = [sum(h.values()) for h in history]
  assert np.all(np.isfinite(total))
  late = {k: np.mean([h[k] for h in history[-10:]]) for k in history[0]}
  assert np.mean(total[-10:]) < 0.35 * total[0], total
  assert late['loss_rpn_cls'] < 0.2 * history[0]['loss_rpn_cls'], history
  assert late['loss_cls'] < 0.3 * history[0]['loss_cls'], history


@pytest.mark.slow
def test_r18_detector_with_detectron2_defaults_trains_and_detects():
  """The full-width R18-FPN with every detectron2 default (2000/1000 proposals, 256
  anchors, 512 RoIs, 80 classes, 100 detections) on a 128x160 batch."""
  model = nnx.eval_shape(lambda: faster_rcnn.create('R18', rngs=nnx.Rngs(0)))
  model = detectron2_names.load_detectron2_state(model, numpy_detectron2_state(model))
  batch = synthetic_batch()
  batch['image'] = np.pad(batch['image'], ((0, 0), (0, 64), (0, 96), (0, 0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  (_, (losses, outputs)), _ = jax.jit(jax.value_and_grad(_loss_fn(graphdef, rest),
                                                         has_aux=True))(
      params, batch, jax.random.key(0))
  assert all(np.isfinite(v) and v > 0 for v in losses.values()), losses
  assert outputs['rois'].shape == (2, 512, 4) and outputs['box_features'].shape == (2, 512, 1024)
  assert outputs['class_logits'].shape == (2, 512, 81)
  detections = nnx.jit(lambda m, x, hw: m.detect(x, hw))(model, batch['image'],
                                                          batch['image_hw'])
  assert detections['boxes'].shape == (2, 100, 4) and detections['classes'].shape == (2, 100)
