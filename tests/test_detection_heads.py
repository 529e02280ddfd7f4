"""Heads, inits, FREEZE_AT and detectron2 names (kd_jax/detection/heads.py, layers.py,
detectron2_names.py) against torch transcriptions of detectron2's modules and its
state-dict naming."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from kd_jax.detection import backbones, detectron2_names, faster_rcnn, heads, layers
from kd_jax.errors import UserError


def _r18_expected_shapes(num_classes=80):
  """detectron2 state-dict names and (PyTorch) shapes of faster_rcnn_R_18_FPN, written
  from resnet.py (BasicStem, BasicBlock), fpn.py, rpn.py and box_head/fast_rcnn.py."""
  shapes = {}

  def conv_norm(name, out_channels, in_channels, k):
    shapes[f'backbone.bottom_up.{name}.weight'] = (out_channels, in_channels, k, k)
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'backbone.bottom_up.{name}.norm.{leaf}'] = (out_channels,)

  conv_norm('stem.conv1', 64, 3, 7)
  in_channels = 64
  for stage, out_channels in zip(range(2, 6), (64, 128, 256, 512)):
    for block in range(2):
      block_in = in_channels if block == 0 else out_channels
      conv_norm(f'res{stage}.{block}.conv1', out_channels, block_in, 3)
      conv_norm(f'res{stage}.{block}.conv2', out_channels, out_channels, 3)
      if block_in != out_channels:
        conv_norm(f'res{stage}.{block}.shortcut', out_channels, block_in, 1)
    in_channels = out_channels
  for level, channels in zip(range(2, 6), (64, 128, 256, 512)):
    shapes.update({f'backbone.fpn_lateral{level}.weight': (256, channels, 1, 1),
                   f'backbone.fpn_lateral{level}.bias': (256,),
                   f'backbone.fpn_output{level}.weight': (256, 256, 3, 3),
                   f'backbone.fpn_output{level}.bias': (256,)})
  head = 'proposal_generator.rpn_head'
  shapes.update({f'{head}.conv.weight': (256, 256, 3, 3), f'{head}.conv.bias': (256,),
                 f'{head}.objectness_logits.weight': (3, 256, 1, 1),
                 f'{head}.objectness_logits.bias': (3,),
                 f'{head}.anchor_deltas.weight': (12, 256, 1, 1),
                 f'{head}.anchor_deltas.bias': (12,),
                 'roi_heads.box_head.fc1.weight': (1024, 256 * 7 * 7),
                 'roi_heads.box_head.fc1.bias': (1024,),
                 'roi_heads.box_head.fc2.weight': (1024, 1024),
                 'roi_heads.box_head.fc2.bias': (1024,),
                 'roi_heads.box_predictor.cls_score.weight': (num_classes + 1, 1024),
                 'roi_heads.box_predictor.cls_score.bias': (num_classes + 1,),
                 'roi_heads.box_predictor.bbox_pred.weight': (4 * num_classes, 1024),
                 'roi_heads.box_predictor.bbox_pred.bias': (4 * num_classes,)})
  return shapes


@pytest.fixture(scope='module')
def abstract_r18():
  return lambda: nnx.eval_shape(lambda: faster_rcnn.create('R18', rngs=nnx.Rngs(0)))


def test_r18_detector_has_detectron2_names_and_loads_them(abstract_r18):
  expected = _r18_expected_shapes()
  assert set(detectron2_names.detectron2_names(abstract_r18())) == set(expected)
  rng = np.random.default_rng(0)
  state = {name: rng.normal(size=shape).astype(np.float32) for name, shape in expected.items()}
  # buffers detectron2 skips when old model-zoo files carry them
  state.update({'backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked': np.zeros(()),
                'pixel_mean': np.zeros((3, 1, 1)),
                'proposal_generator.anchor_generator.cell_anchors.0': np.zeros((3, 4))})
  model = detectron2_names.load_detectron2_state(abstract_r18(), state)
  np.testing.assert_array_equal(model.roi_heads.box_predictor.cls_score.kernel[...],
                                state['roi_heads.box_predictor.cls_score.weight'].T)
  np.testing.assert_array_equal(
      model.backbone.bottom_up.res3[0].shortcut.kernel[...],
      state['backbone.bottom_up.res3.0.shortcut.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.backbone.bottom_up.stem.conv1.norm.running_var[...],
                                state['backbone.bottom_up.stem.conv1.norm.running_var'])
  # a sub-module loads the part of a full state under its prefix (ImageNet-initialised
  # backbone of a detector): the other tensors are not its business
  bottom_up = detectron2_names.load_detectron2_state(
      abstract_r18().backbone.bottom_up, state, prefix='backbone.bottom_up.')
  np.testing.assert_array_equal(bottom_up.res5[1].conv2.kernel[...], state[
      'backbone.bottom_up.res5.1.conv2.weight'].transpose(2, 3, 1, 0))


def test_bad_detectron2_state_is_one_line_naming_the_tensor(abstract_r18):
  expected = _r18_expected_shapes()
  state = {name: np.zeros(shape, np.float32) for name, shape in expected.items()}
  missing = dict(state)
  del missing['roi_heads.box_head.fc2.weight']
  with pytest.raises(UserError, match=r'^w\.pkl: tensor roi_heads\.box_head\.fc2\.weight is '
                     r'missing$'):
    detectron2_names.load_detectron2_state(abstract_r18(), missing, source='w.pkl')
  wrong = dict(state, **{'backbone.fpn_output3.weight': np.zeros((256, 256, 1, 1))})
  with pytest.raises(UserError, match=r'tensor backbone\.fpn_output3\.weight has shape '
                     r'\(256, 256, 1, 1\), the model needs \(256, 256, 3, 3\)'):
    detectron2_names.load_detectron2_state(abstract_r18(), wrong)
  extra = dict(state, **{'backbone.bottom_up.res4.2.conv1.weight': np.zeros((1,))})
  with pytest.raises(UserError, match=r'tensor backbone\.bottom_up\.res4\.2\.conv1\.weight '
                     r'is not in the model'):
    detectron2_names.load_detectron2_state(abstract_r18(), extra)
  # Caffe2-converted FrozenBN without running statistics: identity, as detectron2 loads them
  no_stats = {k: v for k, v in state.items() if not k.endswith(('running_mean', 'running_var'))}
  model = detectron2_names.load_detectron2_state(abstract_r18(), no_stats)
  np.testing.assert_array_equal(model.backbone.bottom_up.stem.conv1.norm.running_var[...], 1.0)


def test_rpn_head_and_box_head_match_torch_transcriptions():
  """StandardRPNHead + rpn.py's permutes and FastRCNNConvFCHead's NCHW flatten."""
  rng = np.random.default_rng(0)
  channels, anchors = 8, 3
  rpn_head = heads.StandardRPNHead(channels, anchors, rngs=nnx.Rngs(0))
  box_head = heads.FastRCNNConvFCHead(channels, fc_dim=16, rngs=nnx.Rngs(1))
  state = {'conv.weight': rng.normal(size=(8, 8, 3, 3)), 'conv.bias': rng.normal(size=8),
           'objectness_logits.weight': rng.normal(size=(3, 8, 1, 1)),
           'objectness_logits.bias': rng.normal(size=3),
           'anchor_deltas.weight': rng.normal(size=(12, 8, 1, 1)),
           'anchor_deltas.bias': rng.normal(size=12)}
  box_state = {'fc1.weight': rng.normal(size=(16, 8 * 49)), 'fc1.bias': rng.normal(size=16),
               'fc2.weight': rng.normal(size=(16, 16)), 'fc2.bias': rng.normal(size=16)}
  detectron2_names.load_detectron2_state(rpn_head, state)
  detectron2_names.load_detectron2_state(box_head, box_state)
  t = {k: torch.tensor(v, dtype=torch.float32) for k, v in {**state, **box_state}.items()}

  features = rng.normal(size=(2, 5, 6, channels)).astype(np.float32)
  x = torch.from_numpy(features.transpose(0, 3, 1, 2).copy())
  hidden = torch.relu(torch.nn.functional.conv2d(x, t['conv.weight'], t['conv.bias'], padding=1))
  score = torch.nn.functional.conv2d(hidden, t['objectness_logits.weight'],
                                     t['objectness_logits.bias'])
  delta = torch.nn.functional.conv2d(hidden, t['anchor_deltas.weight'], t['anchor_deltas.bias'])
  score = score.permute(0, 2, 3, 1).flatten(1)
  delta = delta.view(2, -1, 4, 5, 6).permute(0, 3, 4, 1, 2).flatten(1, -2)
  logits, deltas = rpn_head([features])
  np.testing.assert_allclose(logits[0], score.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(deltas[0], delta.numpy(), rtol=1e-4, atol=1e-4)

  pooled = rng.normal(size=(3, 7, 7, channels)).astype(np.float32)
  flat = torch.from_numpy(pooled.transpose(0, 3, 1, 2).copy()).flatten(1)
  expected = torch.relu(torch.relu(flat @ t['fc1.weight'].T + t['fc1.bias'])
                        @ t['fc2.weight'].T + t['fc2.bias'])
  np.testing.assert_allclose(box_head(pooled), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_inits_follow_detectron2():
  rngs = nnx.Rngs(0)
  rpn_head = heads.StandardRPNHead(64, 3, rngs=rngs)
  predictor = heads.FastRCNNOutputLayers(1024, 80, rngs=rngs)
  box_head = heads.FastRCNNConvFCHead(16, fc_dim=256, rngs=rngs)
  std = lambda v: float(jnp.std(v[...]))
  assert abs(std(rpn_head.conv.kernel) - 0.01) < 5e-4
  assert abs(std(predictor.cls_score.kernel) - 0.01) < 5e-4
  assert abs(std(predictor.bbox_pred.kernel) - 0.001) < 5e-5
  bound = np.sqrt(3.0 / (16 * 49))  # c2_xavier_fill: kaiming_uniform(a=1)
  fc1 = np.asarray(box_head.fc1.kernel[...])
  assert np.abs(fc1).max() <= bound * (1 + 1e-6) and fc1.max() > 0.99 * bound
  for module in (rpn_head.conv, predictor.cls_score, box_head.fc2):
    assert not np.any(module.bias[...])


def test_freeze_at_freezes_stem_and_res2_only():
  model = nnx.eval_shape(lambda: backbones.ResNet(18, freeze_at=2, rngs=nnx.Rngs(0)))
  frozen = lambda module: isinstance(module.conv1.kernel, layers.Frozen)
  assert frozen(model.stem) and all(frozen(block) for block in model.res2)
  assert not any(frozen(block) for stage in (model.res3, model.res4, model.res5)
                 for block in stage)
  # FrozenBN is frozen everywhere; trainable = nnx.Param only
  assert isinstance(model.res5[1].conv2.norm.weight, layers.Frozen)
  assert not jax.tree.leaves(nnx.state(model.res2, nnx.Param))
  unfrozen = nnx.eval_shape(lambda: backbones.ResNet(18, freeze_at=0, rngs=nnx.Rngs(0)))
  assert isinstance(unfrozen.stem.conv1.kernel, nnx.Param)
  mv2 = nnx.eval_shape(lambda: backbones.MobileNetV2(freeze_at=2, rngs=nnx.Rngs(0)))
  kernel = lambda i: mv2.features[i][0].kernel if i == 0 else mv2.features[i].conv[0].kernel
  assert [isinstance(kernel(i), layers.Frozen) for i in range(6)] == [True] * 4 + [False] * 2
  assert mv2.out_channels == (24, 32, 96, 320) and mv2.output_indices == (3, 6, 13, 17)
