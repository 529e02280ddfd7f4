"""AT (Zagoruyko & Komodakis 2017) on CIFAR-100, mdistiller recipe: CE + 1000 sum of AT(p=2).

  python main.py --config=configs/cifar_at.py:res32x4_res8x4 --workdir=runs/at_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="at", ce_weight=1.0, feat_weight=1000.0, p=2.0))
  config.source = ("AT: mdistiller distillers/AT.py, engine/cfg.py, configs/cifar100/at.yaml "
                   "(METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
