"""Multi-view CSKD as in the public code (METHODS.md 4.3): MLKD weak/strong views.

  python main.py --config=configs/cifar_cskd_mv.py:res32x4_res8x4 --workdir=runs/cskdmv_res32x4_res8x4

Recipe: 480 epochs, lr 0.025 (0.01 for ShuffleNet/MobileNet students), x0.1 at
150/180/210, batch 64, SGD momentum 0.9, wd 5e-4. arg: a pair of
configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="cskd_mv", ce_weight=1.0, weight=2.0, cc_weight=1.0,
                                      bc_weight=1.0, temperature=4.0, t_low=2.0, t_high=6.0,
                                      cutout="public_code"))
  config.source = ("CSKD multi-view as the public code llieeai/lud (MLKD pipeline; "
                   "METHODS.md 4.3)")
  config = cifar_common.for_pair(config, arg)
  if arg != "smoke":
    config.num_epochs = 480
    if config.student.model not in cifar_common.SMALL_LR_STUDENTS:
      config.optim.lr = 0.025
  return config
