"""DKD (Zhao et al. CVPR 2022) on CIFAR-100: CE + warm-up(20) * (TCKD + beta NCKD), T = 4.

  python main.py --config=configs/cifar_dkd.py:res32x4_res8x4 --workdir=runs/dkd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'; beta per pair as mdistiller's
configs/cifar100/dkd/*.yaml (beta 8 where a pair has no yaml: the five LS/MLKD pairs).
"""
from configs import cifar_common

BETA = {
    "res56_res20": {"beta": 2.0},
    "res110_res32": {"beta": 2.0},
    "vgg13_vgg8": {"beta": 6.0},
    "wrn40_2_wrn16_2": {"beta": 6.0},
    "wrn40_2_wrn40_1": {"beta": 6.0},
    "vgg13_mv2": {"beta": 6.0},
}
# The LS/MLKD pairs: mdistiller has no DKD yaml for them (wrn40_2_shuv1's sets no beta).
NO_YAML = ("res110_res20", "res32x4_wrn16_2", "res32x4_wrn40_2", "wrn40_2_res8x4", "wrn40_2_mv2")


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="dkd", ce_weight=1.0, alpha=1.0, beta=8.0,
                                      temperature=4.0, warmup_epochs=20, standardize=False))
  config.source = "DKD (Zhao et al. CVPR 2022): mdistiller configs/cifar100/dkd (METHODS.md 3)"
  if arg in NO_YAML:
    config.source += "; no mdistiller yaml for this pair: beta 8"
  return cifar_common.for_pair(config, arg, BETA)
