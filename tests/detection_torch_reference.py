"""torchvision references for the detection backbones (tests only; needs torch).

torchvision's ResNet + torchvision.ops.FeaturePyramidNetwork (LastLevelMaxPool) compute
what detectron2's ResNet-FPN computes once BatchNorm is in eval mode (FrozenBN is an eval
BatchNorm with eps 1e-5); torchvision puts a bottleneck's stride on the 3x3 conv, so the
MSRA variant (stride on the 1x1) is made by moving the strides of each stage's first
block. torchvision's mobilenet_v2 features equal the ND repository's MobileNetV2 up to
how the nn.Sequentials nest. `*_detectron2_state` renames the torch state dict to
detectron2 names (written from detectron2's resnet.py / fpn.py and the ND mobilenetv2.py).
"""
import re

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.ops import feature_pyramid_network as tv_fpn

MOBILENETV2_OUTPUTS = (3, 6, 13, 17)


def randomize(module, seed):
  """Random weights, biases and BatchNorm statistics (so no layer is an identity)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if name.endswith('running_var'):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith(('running_mean', 'bias')):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
      elif tensor.ndim == 1:  # BatchNorm weight
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      else:
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
  return module.eval()


class ResNetFPN(nn.Module):
  """torchvision ResNet body + FPN; forward returns [p2, p3, p4, p5, p6] (NCHW)."""

  def __init__(self, depth, stride_in_1x1=False):
    super().__init__()
    self.body = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    if stride_in_1x1 and depth >= 50:
      for layer in (self.body.layer2, self.body.layer3, self.body.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    self.fpn = tv_fpn.FeaturePyramidNetwork(widths, 256, tv_fpn.LastLevelMaxPool())

  def forward(self, x):
    body = self.body
    x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
    features = {}
    for index, layer in enumerate((body.layer1, body.layer2, body.layer3, body.layer4)):
      x = layer(x)
      features[str(index)] = x
    return list(self.fpn(features).values())


class MobileNetV2FPN(nn.Module):
  """torchvision mobilenet_v2 features 0..17 + FPN on blocks 3, 6, 13, 17 (m2..m5)."""

  def __init__(self):
    super().__init__()
    self.features = torchvision.models.mobilenet_v2(weights=None).features[:18]
    self.fpn = tv_fpn.FeaturePyramidNetwork([24, 32, 96, 320], 256,
                                            tv_fpn.LastLevelMaxPool())

  def forward(self, x):
    features = {}
    for index, layer in enumerate(self.features):
      x = layer(x)
      if index in MOBILENETV2_OUTPUTS:
        features[str(len(features))] = x
    return list(self.fpn(features).values())


def _fpn_name(name):
  match = re.fullmatch(r'fpn\.(inner|layer)_blocks\.(\d)\.0\.(weight|bias)', name)
  if match:
    kind = 'lateral' if match[1] == 'inner' else 'output'
    return f'backbone.fpn_{kind}{int(match[2]) + 2}.{match[3]}'
  return None


def resnet_fpn_detectron2_state(model):
  """torchvision names -> detectron2 names (BasicStem/BasicBlock/BottleneckBlock, FPN)."""
  state = {}
  for name, tensor in model.state_dict().items():
    if name.endswith('num_batches_tracked') or name.startswith('body.fc.'):
      continue
    new = _fpn_name(name)
    if new is None:
      name = name.removeprefix('body.')
      name = re.sub(r'^conv1\.', 'stem.conv1.', name)
      name = re.sub(r'^bn1\.', 'stem.conv1.norm.', name)
      name = re.sub(r'^layer(\d)', lambda m: f'res{int(m[1]) + 1}', name)
      name = re.sub(r'\.bn(\d)\.', r'.conv\1.norm.', name)
      name = name.replace('downsample.0.', 'shortcut.').replace('downsample.1.',
                                                                'shortcut.norm.')
      new = 'backbone.bottom_up.' + name
    state[new] = tensor.numpy()
  return state


def mobilenetv2_fpn_detectron2_state(model):
  """torchvision mobilenet_v2 names -> the ND repository's flat `features.i.conv.j`."""
  # torchvision's nested (ConvNormActivation) slots -> ND's flat nn.Sequential indices
  expand = {'0.0': '0', '0.1': '1', '1.0': '3', '1.1': '4', '2': '6', '3': '7'}
  no_expand = {'0.0': '0', '0.1': '1', '1': '3', '2': '4'}
  state = {}
  for name, tensor in model.state_dict().items():
    if name.endswith('num_batches_tracked'):
      continue
    new = _fpn_name(name)
    if new is None:
      match = re.fullmatch(r'features\.(\d+)\.conv\.(\d(?:\.\d)?)\.(\w+)', name)
      if match:
        table = no_expand if match[1] == '1' else expand
        name = f'features.{match[1]}.conv.{table[match[2]]}.{match[3]}'
      new = 'backbone.bottom_up.' + name
    state[new] = tensor.numpy()
  return state


def run(model, images_nhwc):
  """NHWC numpy images -> list of NHWC numpy outputs of the torch model."""
  with torch.no_grad():
    outputs = model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))))
  return [output.numpy().transpose(0, 2, 3, 1) for output in outputs]
