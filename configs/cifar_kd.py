"""KD (Hinton et al.) on CIFAR-100, mdistiller recipe: 0.1 CE + 0.9 KD, T = 4.

  python main.py --config=configs/cifar_kd.py:res32x4_res8x4 --workdir=runs/kd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'. Logit standardization (Sun et al.
CVPR 2024) is `--config.method.standardize=True`.
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0,
                                      standardize=False))
  config.source = "KD (Hinton et al. 2015): mdistiller configs/cifar100/kd.yaml (METHODS.md 2)"
  return cifar_common.for_pair(config, arg)
