"""KD and DKD with logit standardization (Sun et al. CVPR 2024) on CIFAR-100.

  python main.py --config=configs/cifar_ls.py:kd,res32x4_res8x4 --workdir=runs/kdls_res32x4_res8x4

Both sides' logits are z-scored per sample before the KD term. The authors' CIFAR
command (`--logit-stand --base-temp 2 --kd-weight 9`): KD with T = 2, KD weight 9,
CE weight 0.1. For DKD the same command is used; here that is T = 2 with the DKD
pair's alpha/beta (how the authors' `--kd-weight` scales DKD was not checked).
arg: 'kd,PAIR' or 'dkd,PAIR' (PAIR from configs/cifar_common.PAIRS or 'smoke').
"""
from configs import cifar_common, cifar_dkd


def get_config(arg="kd,res32x4_res8x4"):
  base, _, pair = arg.partition(",")
  if base == "kd":
    config = cifar_common.get_base(dict(name="kd", ce_weight=0.1, kd_weight=9.0,
                                        temperature=2.0, standardize=True))
    return cifar_common.for_pair(config, pair)
  if base == "dkd":
    config = cifar_dkd.get_config(pair)
    config.method.update(dict(temperature=2.0, standardize=True))
    return config
  raise ValueError(f"unknown base {base!r}; valid: kd, dkd")
