"""KDSVD (Lee et al. ECCV 2018) on CIFAR-100, mdistiller recipe: CE + KDSVD(K=1) over feats[1:].

  python main.py --config=configs/cifar_kdsvd.py:res32x4_res8x4 --workdir=runs/kdsvd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'. mdistiller configs/cifar100/kdsvd.yaml
and engine/cfg.py: K 1, CE weight 1, KDSVD weight 1.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="kdsvd", ce_weight=1.0, feat_weight=1.0, k=1))
  config.source = ("KDSVD (Lee et al. 2018): mdistiller configs/cifar100/kdsvd.yaml, "
                   "engine/cfg.py (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
