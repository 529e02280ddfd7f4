"""RKD (Park et al. 2019) on CIFAR-100, mdistiller recipe: CE + RKD (25 distance + 50 angle).

  python main.py --config=configs/cifar_rkd.py:res32x4_res8x4 --workdir=runs/rkd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="rkd", ce_weight=1.0, feat_weight=1.0,
                                      distance_weight=25.0, angle_weight=50.0))
  config.source = ("RKD: mdistiller distillers/RKD.py, engine/cfg.py, "
                   "configs/cifar100/rkd.yaml (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
