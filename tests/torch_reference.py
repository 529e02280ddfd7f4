"""PyTorch reference models for the checkpoint-import tests (tests only; needs torch).

Written to reproduce mdistiller's CIFAR architectures (models/cifar/*.py) module for
module, so their state-dict keys are exactly those of published mdistiller / CRD
teachers, plus a torchvision-layout ImageNet ResNet18. Each model's forward returns
(logits, pooled) where pooled is the embedding fed to the classifier.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


# --- mdistiller resnet.py: CIFAR ResNets (resnet8 ... resnet110, resnet8x4/32x4) ---

class CifarBasicBlock(nn.Module):
  """Post-activation basic block with an optional 1x1 conv+BN `downsample`."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class CifarResNet(nn.Module):
  """conv1-bn1-ReLU, layer1..3 of (depth-2)/6 blocks, 8x8 average pool, fc."""

  def __init__(self, depth, num_filters, num_classes):
    super().__init__()
    n = (depth - 2) // 6
    self.inplanes = num_filters[0]
    self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(num_filters[0])
    self.layer1 = self._make_layer(num_filters[1], n)
    self.layer2 = self._make_layer(num_filters[2], n, stride=2)
    self.layer3 = self._make_layer(num_filters[3], n, stride=2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(num_filters[3], num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes))
    layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    pooled = self.avgpool(x).flatten(1)
    return self.fc(pooled), pooled


# --- mdistiller resnetv2.py: CIFAR ResNet50 (Bottleneck, [3, 4, 6, 3]) ---

class Bottleneck(nn.Module):
  """1x1-3x3-1x1 bottleneck, expansion 4, 1x1 conv+BN `shortcut` on shape change."""

  expansion = 4

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(self.expansion * planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != self.expansion * planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
          nn.BatchNorm2d(self.expansion * planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + self.shortcut(x))


class ResNetV2(nn.Module):
  """3x3 stem (stride 1), layer1..4, adaptive average pool, `linear`."""

  def __init__(self, num_blocks, num_classes):
    super().__init__()
    self.in_planes = 64
    self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.layer1 = self._make_layer(64, num_blocks[0], 1)
    self.layer2 = self._make_layer(128, num_blocks[1], 2)
    self.layer3 = self._make_layer(256, num_blocks[2], 2)
    self.layer4 = self._make_layer(512, num_blocks[3], 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for block_stride in [stride] + [1] * (num_blocks - 1):
      layers.append(Bottleneck(self.in_planes, planes, block_stride))
      self.in_planes = planes * Bottleneck.expansion
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    pooled = self.avgpool(out).flatten(1)
    return self.linear(pooled), pooled


# --- mdistiller wrn.py: Wide ResNets ---

class WideBasicBlock(nn.Module):
  """Pre-activation block; when widths differ the activated input feeds the shortcut."""

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
    self.equal_in_out = in_planes == out_planes
    self.convShortcut = None
    if not self.equal_in_out:
      self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

  def forward(self, x):
    if self.equal_in_out:
      out = F.relu(self.bn1(x))
      shortcut = x
    else:
      x = F.relu(self.bn1(x))
      out = x
      shortcut = self.convShortcut(x)
    out = F.relu(self.bn2(self.conv1(out)))
    return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
  """One WRN stage, kept under `.layer` as in mdistiller (keys block1.layer.0...)."""

  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                       stride if i == 0 else 1) for i in range(nb_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """conv1, block1..3, final bn1+ReLU, 8x8 average pool, fc."""

  def __init__(self, depth, widen_factor, num_classes):
    super().__init__()
    channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
    self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
    self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
    self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
    self.bn1 = nn.BatchNorm2d(channels[3])
    self.fc = nn.Linear(channels[3], num_classes)

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.relu(self.bn1(out))
    pooled = F.avg_pool2d(out, 8).flatten(1)
    return self.fc(pooled), pooled


# --- mdistiller vgg.py: VGG with BatchNorm ---

VGG_CFG = {
    'vgg8': [[64], [128], [256], [512], [512]],
    'vgg11': [[64], [128], [256, 256], [512, 512], [512, 512]],
    'vgg13': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    'vgg16': [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    'vgg19': [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
              [512, 512, 512, 512]],
}


class VGG(nn.Module):
  """block0..4 of conv(bias)+BN+ReLU (last ReLU outside), max-pools, `classifier`."""

  def __init__(self, cfg, num_classes):
    super().__init__()
    in_channels = 3
    for i, stage in enumerate(cfg):
      setattr(self, f'block{i}', self._make_layers(stage, in_channels))
      in_channels = stage[-1]
    self.pool0 = nn.MaxPool2d(2, 2)
    self.pool1 = nn.MaxPool2d(2, 2)
    self.pool2 = nn.MaxPool2d(2, 2)
    self.pool3 = nn.MaxPool2d(2, 2)
    self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
    self.classifier = nn.Linear(512, num_classes)

  @staticmethod
  def _make_layers(stage, in_channels):
    layers = []
    for width in stage:
      layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                 nn.ReLU(inplace=True)]
      in_channels = width
    return nn.Sequential(*layers[:-1])

  def forward(self, x):
    height = x.shape[2]
    x = self.pool0(F.relu(self.block0(x)))
    x = self.pool1(F.relu(self.block1(x)))
    x = self.pool2(F.relu(self.block2(x)))
    x = F.relu(self.block3(x))
    if height == 64:
      x = self.pool3(x)
    x = F.relu(self.block4(x))
    pooled = self.pool4(x).flatten(1)
    return self.classifier(pooled), pooled


# --- mdistiller mobilenetv2.py: MobileNetV2 (`mobile_half`: T=6, width 0.5) ---

def _conv_bn(inp, oup, kernel, stride):
  return nn.Sequential(
      nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, bias=False),
      nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
  """pw-expand, depthwise 3x3, pw-linear in one `conv` Sequential; residual if shapes match."""

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = inp * expand_ratio
    self.use_res_connect = stride == 1 and inp == oup
    self.conv = nn.Sequential(
        nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup))

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """conv1 (stride 2), blocks (ModuleList of Sequentials), conv2 to 1280, classifier."""

  def __init__(self, expansion, num_classes, width_mult):
    super().__init__()
    setting = [[1, 16, 1, 1], [expansion, 24, 2, 1], [expansion, 32, 3, 2],
               [expansion, 64, 4, 2], [expansion, 96, 3, 1], [expansion, 160, 3, 2],
               [expansion, 320, 1, 1]]
    input_channel = int(32 * width_mult)
    self.conv1 = _conv_bn(3, input_channel, 3, 2)
    self.blocks = nn.ModuleList([])
    for t, c, n, s in setting:
      output_channel = int(c * width_mult)
      layers = []
      for stride in [s] + [1] * (n - 1):
        layers.append(InvertedResidual(input_channel, output_channel, stride, t))
        input_channel = output_channel
      self.blocks.append(nn.Sequential(*layers))
    last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = _conv_bn(input_channel, last_channel, 1, 1)
    self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
    self.avgpool = nn.AvgPool2d(32 // 16, ceil_mode=True)

  def forward(self, x):
    out = self.conv1(x)
    for block in self.blocks:
      out = block(out)
    out = self.conv2(out)
    pooled = self.avgpool(out).flatten(1)
    return self.classifier(pooled), pooled


# --- mdistiller ShuffleNetv1.py / ShuffleNetv2.py ---

def _shuffle(x, groups):
  n, c, h, w = x.shape
  return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Bottleneck(nn.Module):
  """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an avg-pool."""

  def __init__(self, in_planes, out_planes, stride, groups):
    super().__init__()
    self.stride = stride
    mid_planes = int(out_planes / 4)
    self.first_groups = 1 if in_planes == 24 else groups
    self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
    self.bn1 = nn.BatchNorm2d(mid_planes)
    self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1,
                           groups=mid_planes, bias=False)
    self.bn2 = nn.BatchNorm2d(mid_planes)
    self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = nn.Sequential()
    if stride == 2:
      self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = _shuffle(out, self.first_groups)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
  """1x1 stem to 24, layer1..3 (first block stride 2, concat), 4x4 pool, `linear`."""

  def __init__(self, out_planes, num_blocks, groups, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    self.in_planes = 24
    self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
    self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
    self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
    self.linear = nn.Linear(out_planes[2], num_classes)

  def _make_layer(self, out_planes, num_blocks, groups):
    layers = []
    for i in range(num_blocks):
      cat_planes = self.in_planes if i == 0 else 0
      layers.append(ShuffleV1Bottleneck(self.in_planes, out_planes - cat_planes,
                                        2 if i == 0 else 1, groups))
      self.in_planes = out_planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    pooled = F.avg_pool2d(out, 4).flatten(1)
    return self.linear(pooled), pooled


class ShuffleV2Basic(nn.Module):
  """Split channels in half; 1x1, depthwise 3x3, 1x1 on the second half; concat, shuffle."""

  def __init__(self, in_channels):
    super().__init__()
    half = in_channels // 2
    self.conv1 = nn.Conv2d(half, half, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(half)
    self.conv2 = nn.Conv2d(half, half, 3, stride=1, padding=1, groups=half, bias=False)
    self.bn2 = nn.BatchNorm2d(half)
    self.conv3 = nn.Conv2d(half, half, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(half)

  def forward(self, x):
    c = x.shape[1] // 2
    x1, x2 = x[:, :c], x[:, c:]
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    out = F.relu(self.bn3(self.conv3(out)))
    return _shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
  """Two stride-2 branches (depthwise-pw and pw-depthwise-pw), concat, shuffle."""

  def __init__(self, in_channels, out_channels):
    super().__init__()
    mid = out_channels // 2
    self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1,
                           groups=in_channels, bias=False)
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    out1 = self.bn1(self.conv1(x))
    out1 = F.relu(self.bn2(self.conv2(out1)))
    out2 = F.relu(self.bn3(self.conv3(x)))
    out2 = self.bn4(self.conv4(out2))
    out2 = F.relu(self.bn5(self.conv5(out2)))
    return _shuffle(torch.cat([out1, out2], 1), 2)


class ShuffleNetV2(nn.Module):
  """1x1 stem to 24, layer1..3 (DownBlock + basic blocks), conv2+bn2, `linear`."""

  def __init__(self, out_channels, num_blocks, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    self.in_channels = 24
    self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
    self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
    self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
    self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def _make_layer(self, out_channels, num_blocks):
    layers = [ShuffleV2Down(self.in_channels, out_channels)]
    layers += [ShuffleV2Basic(out_channels) for _ in range(num_blocks)]
    self.in_channels = out_channels
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.relu(self.bn2(self.conv2(out)))
    pooled = F.avg_pool2d(out, 4).flatten(1)
    return self.linear(pooled), pooled


# --- torchvision resnet.py layout: ImageNet ResNet18 ---

class TorchvisionBasicBlock(nn.Module):
  """torchvision BasicBlock: keys conv1/bn1/conv2/bn2/downsample.{0,1}."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return F.relu(out + identity)


class ImageNetResNet18(nn.Module):
  """7x7/2 stem, 3x3/2 max-pool, layer1..4 of two BasicBlocks, adaptive pool, fc."""

  def __init__(self, num_classes):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1 = self._make_layer(64, 1)
    self.layer2 = self._make_layer(128, 2)
    self.layer3 = self._make_layer(256, 2)
    self.layer4 = self._make_layer(512, 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512, num_classes)

  def _make_layer(self, planes, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes))
    layers = [TorchvisionBasicBlock(self.inplanes, planes, stride, downsample),
              TorchvisionBasicBlock(planes, planes)]
    self.inplanes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    pooled = self.avgpool(x).flatten(1)
    return self.fc(pooled), pooled


_SMALL, _WIDE = [16, 16, 32, 64], [32, 64, 128, 256]

# kd_jax model name -> constructor(num_classes), as mdistiller builds them.
MODELS = {
    'resnet8': lambda c: CifarResNet(8, _SMALL, c),
    'resnet20': lambda c: CifarResNet(20, _SMALL, c),
    'resnet32': lambda c: CifarResNet(32, _SMALL, c),
    'resnet56': lambda c: CifarResNet(56, _SMALL, c),
    'resnet110': lambda c: CifarResNet(110, _SMALL, c),
    'resnet8x4': lambda c: CifarResNet(8, _WIDE, c),
    'resnet32x4': lambda c: CifarResNet(32, _WIDE, c),
    'ResNet50': lambda c: ResNetV2([3, 4, 6, 3], c),
    'wrn_16_1': lambda c: WideResNet(16, 1, c),
    'wrn_16_2': lambda c: WideResNet(16, 2, c),
    'wrn_40_1': lambda c: WideResNet(40, 1, c),
    'wrn_40_2': lambda c: WideResNet(40, 2, c),
    **{name: (lambda cfg: lambda c: VGG(cfg, c))(cfg) for name, cfg in VGG_CFG.items()},
    'MobileNetV2': lambda c: MobileNetV2(6, c, 0.5),
    'ShuffleV1': lambda c: ShuffleNetV1([240, 480, 960], [4, 8, 4], 3, c),
    'ShuffleV2': lambda c: ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), c),
    'imagenet_resnet18': ImageNetResNet18,
}


def randomize(model, generator):
  """Random weights and BatchNorm running statistics, so every loaded value matters.

  BatchNorm scales below one keep activations O(1) through deep residual stacks, so an
  absolute tolerance on the outputs stays meaningful.
  """
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
        if module.bias is not None:
          module.bias.normal_(0.0, 0.05, generator=generator)
      elif isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.4, 0.8, generator=generator)
        module.bias.normal_(0.0, 0.05, generator=generator)
        module.running_mean.normal_(0.0, 0.05, generator=generator)
        module.running_var.uniform_(0.5, 1.5, generator=generator)
        module.num_batches_tracked.fill_(7)
  return model.eval()
