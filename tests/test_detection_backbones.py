"""Backbones + FPN of the detector against torchvision with the same weights
(kd_jax/detection/backbones.py, fpn.py; METHODS.md section 13), loaded by detectron2 name."""
import numpy as np
import pytest
from flax import nnx

from kd_jax.detection import backbones, detectron2_names, fpn
from tests import detection_torch_reference as ref


def _images(seed=0, size=64):
  return np.random.default_rng(seed).normal(0, 50, (2, size, size, 3)).astype(np.float32)


def _compare(torch_model, state, build, images, rtol=1e-4):
  """Builds the model abstractly (no random init), loads `state` by name, runs it jitted."""
  model = detectron2_names.load_detectron2_state(nnx.eval_shape(build), state,
                                                 prefix='backbone.')
  expected = ref.run(torch_model, images)
  got = nnx.jit(lambda m, x: m(x))(model, images)
  assert len(got) == len(expected) == 5
  for level, (g, e) in enumerate(zip(got, expected)):
    assert g.shape == e.shape, level
    scale = np.abs(e).max()
    np.testing.assert_allclose(np.asarray(g), e, atol=rtol * scale, rtol=0, err_msg=f"p{level + 2}")


def test_r18_fpn_equals_torchvision_resnet18_fpn():
  torch_model = ref.randomize(ref.ResNetFPN(18), seed=1)
  build = lambda: fpn.FPN(backbones.ResNet(18, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  _compare(torch_model, ref.resnet_fpn_detectron2_state(torch_model), build, _images())


@pytest.mark.slow
def test_mobilenetv2_fpn_equals_torchvision_mobilenet_v2_fpn():
  torch_model = ref.randomize(ref.MobileNetV2FPN(), seed=2)
  build = lambda: fpn.FPN(backbones.MobileNetV2(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  _compare(torch_model, ref.mobilenetv2_fpn_detectron2_state(torch_model), build, _images(1))


@pytest.mark.slow
@pytest.mark.parametrize('depth', [50, 101])
def test_msra_resnet_fpn_equals_torchvision_with_stride_in_1x1(depth):
  torch_model = ref.randomize(ref.ResNetFPN(depth, stride_in_1x1=True), seed=3)
  build = lambda: fpn.FPN(backbones.ResNet(depth, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  _compare(torch_model, ref.resnet_fpn_detectron2_state(torch_model), build, _images(2))
