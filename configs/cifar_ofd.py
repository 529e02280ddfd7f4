"""OFD (Heo et al. ICCV 2019) on CIFAR-100, mdistiller recipe: CE + 1e-3 partial L2 on
pre-ReLU stages, with margins from the teacher's BatchNorms.

  python main.py --config=configs/cifar_ofd.py:res32x4_res8x4 --workdir=runs/ofd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'. mdistiller configs/cifar100/ofd.yaml
and engine/cfg.py: CE weight 1, feature weight 0.001, 1x1 connectors; the teacher's
BatchNorms on batch statistics, as mdistiller's OFD (kd_jax/methods/ofd.py). Every pair's
teacher has the BatchNorms OFD needs (model.bn_before_relu(); ShuffleV2 would not).
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="ofd", ce_weight=1.0, feat_weight=1e-3,
                                      teacher_bn="batch"))
  config.source = ("OFD (Heo et al. 2019): mdistiller configs/cifar100/ofd.yaml, "
                   "engine/cfg.py (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
