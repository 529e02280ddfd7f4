"""DIST (Huang et al. NeurIPS 2022) on CIFAR-100: CE + 2 inter + 2 intra, T = 4.

  python main.py --config=configs/cifar_dist.py:res32x4_res8x4 --workdir=runs/dist_res32x4_res8x4

beta = gamma = 2, T = 4 are the DIST paper's CIFAR-100 settings; the mdistiller recipe
otherwise. arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="dist", ce_weight=1.0, beta=2.0, gamma=2.0,
                                      temperature=4.0))
  config.source = "DIST (Huang et al. NeurIPS 2022), paper's CIFAR settings"
  return cifar_common.for_pair(config, arg)
