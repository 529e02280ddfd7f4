"""MLKD (Jin et al. CVPR 2023) on CIFAR-100, each pair as the authors' config runs it.

  python main.py --config=configs/cifar_mlkd.py:res32x4_res8x4 --workdir=runs/mlkd_res32x4_res8x4

Loss (kd_jax/methods/mlkd.py): mdistiller's KD weights (CE 0.1, KD 0.9, T 4, which the MLKD
configs leave at their defaults) on the weak/strong views. Schedule per pair from the
configs, not one rule: batch 64, SGD momentum 0.9, wd 5e-4, lr x0.1 at 150/180/210
whatever the length (so a 480- or 960-epoch run spends its second half at lr x0.001).
The 11 benchmark pairs follow Jin-Ying/Multi-Level-Logit-Distillation
configs/cifar100/ours/*.yaml; the 5 pairs that repository lacks follow the logit
standardization repository's MLKD configs (sunshangquan/logit-standardization-KD
configs/cifar100/mlkd/*.yaml, the runs its README's MLKD column compares with). MLKD+LS:
configs/cifar_ls.py:mlkd,PAIR. arg: a pair of configs/cifar_common.PAIRS or 'smoke'.
"""
from configs import cifar_common

_MLKD = "Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/"
_LS = "sunshangquan/logit-standardization-KD configs/cifar100/mlkd/"
# pair -> (epochs, lr, the config file they come from)
SCHEDULES = {
    "res56_res20": (240, 0.025, _MLKD + "res56_res20.yaml"),
    "res110_res32": (240, 0.025, _MLKD + "res110_res32.yaml"),
    "res32x4_res8x4": (240, 0.025, _MLKD + "res32x4_res8x4.yaml"),
    "wrn40_2_wrn16_2": (240, 0.025, _MLKD + "wrn40_2_wrn_16_2.yaml"),
    "wrn40_2_wrn40_1": (240, 0.025, _MLKD + "wrn40_2_wrn_40_1.yaml"),
    "vgg13_vgg8": (240, 0.025, _MLKD + "vgg13_vgg8.yaml"),
    "res32x4_shuv1": (960, 0.01, _MLKD + "res32x4_shuv1.yaml"),
    "wrn40_2_shuv1": (480, 0.01, _MLKD + "wrn40_2_shuv1.yaml"),
    "vgg13_mv2": (480, 0.01, _MLKD + "vgg13_mv2.yaml"),
    "res50_mbv2": (480, 0.01, _MLKD + "res50_mv2.yaml"),
    "res32x4_shuv2": (960, 0.01, _MLKD + "res32x4_shuv2.yaml"),
    "res110_res20": (480, 0.025, _LS + "resnet110_resnet20.yaml"),
    "res32x4_wrn16_2": (480, 0.025, _LS + "resnet32x4_wrn_16_2.yaml"),
    "res32x4_wrn40_2": (480, 0.025, _LS + "resnet32x4_wrn_40_2.yaml"),
    "wrn40_2_res8x4": (480, 0.025, _LS + "wrn_40_2_resnet8x4.yaml"),
    "wrn40_2_mv2": (480, 0.005, _LS + "wrn_40_2_MobileNetV2.yaml"),
}
# The logit standardization repository's own MLKD configs (used by its MLKD+LS runs; the
# logs confirm epochs and lr): 480 epochs everywhere but 960 for the ShuffleNet students of
# resnet32x4, lr 0.025, 0.01 for ShuffleNet/MobileNet students and vgg13 -> vgg8, 0.005 for
# wrn_40_2 -> MobileNetV2.
LS_SCHEDULES = {
    "res56_res20": (480, 0.025, _LS + "resnet56_resnet20.yaml"),
    "res110_res32": (480, 0.025, _LS + "resnet110_resnet32.yaml"),
    "res32x4_res8x4": (480, 0.025, _LS + "resnet32x4_resnet8x4.yaml"),
    "wrn40_2_wrn16_2": (480, 0.025, _LS + "wrn_40_2_wrn_16_2.yaml"),
    "wrn40_2_wrn40_1": (480, 0.025, _LS + "wrn_40_2_wrn_40_1.yaml"),
    "vgg13_vgg8": (480, 0.01, _LS + "vgg13_vgg8.yaml"),
    "res32x4_shuv1": (960, 0.01, _LS + "resnet32x4_ShuffleV1.yaml"),
    "wrn40_2_shuv1": (480, 0.01, _LS + "wrn_40_2_ShuffleV1.yaml"),
    "vgg13_mv2": (480, 0.01, _LS + "vgg13_MobileNetV2.yaml"),
    "res50_mbv2": (480, 0.01, _LS + "ResNet50_MobileNetV2.yaml"),
    "res32x4_shuv2": (960, 0.01, _LS + "resnet32x4_ShuffleV2.yaml"),
    "res110_res20": SCHEDULES["res110_res20"],
    "res32x4_wrn16_2": SCHEDULES["res32x4_wrn16_2"],
    "res32x4_wrn40_2": SCHEDULES["res32x4_wrn40_2"],
    "wrn40_2_res8x4": SCHEDULES["wrn40_2_res8x4"],
    "wrn40_2_mv2": SCHEDULES["wrn40_2_mv2"],
}


def get_config(arg="res32x4_res8x4", schedules=None, **method):
  """The MLKD recipe for `arg`; `schedules` / `method` let configs/cifar_ls.py reuse it."""
  config = cifar_common.get_base(dict(name="mlkd", ce_weight=0.1, kd_weight=0.9,
                                      temperature=4.0, standardize=False,
                                      cutout="public_code") | method)
  config = cifar_common.for_pair(config, arg)
  if arg != "smoke":
    config.num_epochs, config.optim.lr, source = (schedules or SCHEDULES)[arg]
    config.source = f"{source} (MLKD; kd_jax/methods/mlkd.py)"
  return config
