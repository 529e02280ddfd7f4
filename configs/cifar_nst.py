"""NST (Huang & Wang 2017) on CIFAR-100, mdistiller recipe: CE + 50 sum of NST over stages.

  python main.py --config=configs/cifar_nst.py:res32x4_res8x4 --workdir=runs/nst_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="nst", ce_weight=1.0, feat_weight=50.0))
  config.source = ("NST: mdistiller distillers/NST.py, engine/cfg.py, "
                   "configs/cifar100/nst.yaml (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
