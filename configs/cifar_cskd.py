"""CSKD + CSWT, single view (METHODS.md 4.3), on CIFAR-100 with the standard recipe.

  python main.py --config=configs/cifar_cskd.py:res32x4_res8x4 --workdir=runs/cskd_res32x4_res8x4

total = CE + 2 [cskd(T=4) + cskd(T_i)], T_i from CSWT in [2, 6]; CSKD alone:
--config.method.cswt=False. arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="cskd", ce_weight=1.0, weight=2.0, temperature=4.0,
                                      cswt=True, t_low=2.0, t_high=6.0))
  config.source = "CSKD + CSWT, single view, as the paper's equations (METHODS.md 4.3)"
  return cifar_common.for_pair(config, arg)
