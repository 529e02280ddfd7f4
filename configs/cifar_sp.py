"""SP (Tung & Mori 2019) on CIFAR-100, mdistiller recipe: CE + 3000 SP on the last stage.

  python main.py --config=configs/cifar_sp.py:res32x4_res8x4 --workdir=runs/sp_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="sp", ce_weight=1.0, feat_weight=3000.0))
  config.source = ("SP: mdistiller distillers/SP.py, engine/cfg.py, configs/cifar100/sp.yaml "
                   "(METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
