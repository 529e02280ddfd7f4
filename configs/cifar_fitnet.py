"""FitNet (Romero et al. 2015) on CIFAR-100, mdistiller recipe: CE + 100 hint MSE at stage 2.

  python main.py --config=configs/cifar_fitnet.py:res32x4_res8x4 --workdir=runs/fitnet_res32x4_res8x4

The hint regressor (mdistiller's ConvReg) is built from the pair's stage-2 shapes.
arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="fitnet", ce_weight=1.0, feat_weight=100.0,
                                      hint_layer=2))
  config.source = ("FitNet: mdistiller distillers/FitNet.py, engine/cfg.py, "
                   "configs/cifar100/fitnet.yaml (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
