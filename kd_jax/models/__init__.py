"""Model zoo: Flax NNX ports of mdistiller's CIFAR models and torchvision ImageNet models.

Naming: CIFAR models keep mdistiller's names (resnet8 ... resnet32x4, ResNet18, ResNet50,
wrn_*, vgg*, MobileNetV2, ShuffleV1, ShuffleV2); CIFAR "ResNet50" is mdistiller's
`resnetv2.ResNet50`. ImageNet models carry an `imagenet_` prefix (imagenet_resnet18/34/50,
imagenet_mobilenetv1) so they never clash with the CIFAR names. Transformers and RegNetY
keep timm's model names (vit_small_patch16_224, deit_base_distilled_patch16_224,
regnety_160, ...) and timm's module names, so timm checkpoints load (kd_jax/models/vit.py,
regnet.py; LayerNorm weight/bias <-> scale/bias, bare nn.Parameters as they are).

Every model maps `(images [B, H, W, 3], train) -> (logits, features)` where features is
{'pooled': [B, d] after the last ReLU and global pool, before the classifier,
 'stages': tuple of NHWC stage outputs as mdistiller's feats['feats'],
 'preact_stages': the same before their last ReLU, as mdistiller's 'preact_feats'}.

PyTorch state-dict mapping (mechanical, no per-model tables): module attribute names and
nnx.List indices equal the PyTorch names and nn.Sequential indices, so
`layer1.0.downsample.1.running_mean` <-> state path
('layer1', 0, 'downsample', 1, 'mean').
Parameter-free nn.Sequential slots (ReLU) are kept as plain functions in the nnx.List so
indices line up. Leaf names and layouts:
  Conv2d weight (O, I/groups, kh, kw) <-> kernel (kh, kw, I/groups, O); bias <-> bias
  Linear weight (out, in) <-> kernel (in, out); bias <-> bias
  BatchNorm weight / bias / running_mean / running_var <-> scale / bias / mean / var
  num_batches_tracked is ignored.
BatchNorms are layers.BatchNorm (an nnx.BatchNorm whose running_var uses the unbiased
batch variance, as PyTorch), eps 1e-5, momentum 0.1 in PyTorch terms.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from kd_jax.detection import faster_rcnn
from kd_jax.errors import UserError
from kd_jax.models import cifar_resnet
from kd_jax.models import imagenet_resnet
from kd_jax.models.input_norm import INPUT_NORMS, with_input_norm
from kd_jax.models import mobilenetv1
from kd_jax.models import mobilenetv2
from kd_jax.models import regnet
from kd_jax.models import resnetv2
from kd_jax.models import shufflenetv1
from kd_jax.models import shufflenetv2
from kd_jax.models import vgg
from kd_jax.models import vit
from kd_jax.models import wrn

# name -> (constructor(num_classes, *, rngs, dtype), pooled feature dim).
_REGISTRY = {}
for _family in (cifar_resnet, resnetv2, wrn, vgg, mobilenetv2, shufflenetv1,
                shufflenetv2, imagenet_resnet, mobilenetv1, vit, regnet):
  _REGISTRY.update(_family.MODELS)


def _detector(backbone):
  """A Faster R-CNN R-FPN on `backbone` (kd_jax.detection; its pooled width is the box
  head's 1024): the model options are DetectorConfig's fields and freeze_at."""
  def build(num_classes, *, rngs, dtype, freeze_at=2, **options):
    fields = {field.name for field in dataclasses.fields(faster_rcnn.DetectorConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
      raise UserError(f'{", ".join(unknown)}: not an option of a detector '
                      f'(config.student.options); valid: freeze_at, {", ".join(sorted(fields))}')
    options = {key: tuple(value) if isinstance(value, list) else value
               for key, value in options.items()}
    config = faster_rcnn.DetectorConfig(num_classes=num_classes, **options)
    return faster_rcnn.create(backbone, config, freeze_at=freeze_at, dtype=dtype, rngs=rngs)
  return build


DETECTORS = {f"faster_rcnn_{backbone}_FPN": (_detector(backbone),
                                              faster_rcnn.WIDTHS.get(backbone, (0, 1024))[1])
             for backbone in faster_rcnn.BOTTOM_UP}
_REGISTRY.update(DETECTORS)


def names():
  """Sorted list of registered model names."""
  return sorted(_REGISTRY)


def _lookup(name):
  if name not in _REGISTRY:
    raise UserError(f'unknown model {name!r}; valid names: {", ".join(names())}')
  return _REGISTRY[name]


# How an author's code re-initialises the classifier on top of the model's own init:
# 'zoo' keeps it (mdistiller's); 'normal_0.01' draws weight and bias from N(0, 0.01^2)
# (the ND authors' CIFAR ResNets); 'zero_bias' zeroes the bias (the ND authors' EmbTrans
# init loop, which runs over the wrapped student too).
CLASSIFIER_INITS = ('zoo', 'normal_0.01', 'zero_bias')


def create(name, num_classes=100, *, rngs, dtype=jnp.float32, classifier_init='zoo',
           drop_path_rate=0.0, **options):
  """Builds model `name`; params are float32, `dtype` is the computation dtype.

  `drop_path_rate`: stochastic depth, for the models that have it (the transformers).
  `options` (config.student.options): a detector's settings (DETECTORS), none elsewhere.
  """
  constructor, _ = _lookup(name)
  if options and name not in DETECTORS:
    raise UserError(f'model {name!r} takes no options (config.student.options): got '
                    f'{", ".join(sorted(options))}')
  if drop_path_rate and not has_drop_path(name):
    raise UserError(f'model {name!r} has no stochastic depth: drop_path_rate must be 0, got '
                    f'{drop_path_rate}')
  kwargs = {'drop_path_rate': drop_path_rate} if drop_path_rate else {}
  model = constructor(num_classes, rngs=rngs, dtype=dtype, **kwargs, **options)
  if classifier_init not in CLASSIFIER_INITS:
    raise UserError(f'unknown classifier_init {classifier_init!r}; valid: '
                    f'{", ".join(CLASSIFIER_INITS)}')
  if classifier_init != 'zoo':
    for _, linear in nnx.iter_graph(model):
      if isinstance(linear, nnx.Linear):
        reinit_linear(linear, classifier_init, rngs)
  return model


def reinit_linear(linear, scheme, rngs):
  """Applies one of CLASSIFIER_INITS (other than 'zoo') to an nnx.Linear in place."""
  if scheme == 'normal_0.01':
    for param in (linear.kernel, linear.bias):
      param[...] = 0.01 * jax.random.normal(rngs.params(), param.shape, param.dtype)
  elif scheme == 'zero_bias':
    linear.bias[...] = jnp.zeros_like(linear.bias[...])


def has_feature_maps(name):
  """Whether model `name` has spatial stages (features['stages']): CNNs do, ViTs do not."""
  _lookup(name)
  return name not in vit.MODELS


def has_distillation_token(name):
  """Whether model `name` is a distilled DeiT (a second head on a distillation token)."""
  _lookup(name)
  return name in vit.MODELS and '_distilled_' in name


def has_drop_path(name):
  """Whether model `name` takes a drop_path_rate (stochastic depth)."""
  return getattr(_lookup(name)[0], 'has_drop_path', False)


def pooled_dim(name):
  """Width of features['pooled'] for model `name`, without building it."""
  return _lookup(name)[1]
