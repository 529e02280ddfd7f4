"""PKT (Passalis & Tefas 2018) on CIFAR-100, mdistiller recipe: CE + 30000 PKT on pooled features.

  python main.py --config=configs/cifar_pkt.py:res32x4_res8x4 --workdir=runs/pkt_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="pkt", ce_weight=1.0, feat_weight=30000.0))
  config.source = ("PKT: mdistiller distillers/PKT.py, engine/cfg.py, "
                   "configs/cifar100/pkt.yaml (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
