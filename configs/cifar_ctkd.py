"""CTKD (Li et al. AAAI 2023) on CIFAR-100: KD or DKD with a learnt, adversarial temperature.

  python main.py --config=configs/cifar_ctkd.py:res56_res20 --workdir=runs/ctkd_res56_res20
  python main.py --config=configs/cifar_ctkd.py:dkd,res56_res20 --workdir=runs/ctkd_dkd_res56_res20

As zhengli97/CTKD `scripts/run_cifar_distill.sh` runs it: KD base `-r 0.1 -a 0.9 -b 0`,
global temperature (`--mlp_name global`), T = 1 + 20 sigmoid(r) (`--t_start 1 --t_end 20`,
r initialised to 1, so T starts at 15.6), cosine curriculum lambda 0 -> 1 over epochs 1..10
(`--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`), and the mdistiller/CRD
recipe (240 epochs, batch 64, lr 0.05, 0.01 for ShuffleNet/MobileNet students, x0.1 at
150/180/210, wd 5e-4, also on the temperature). The DKD base (`dkd,PAIR`) is the script's
commented DKD line: `-r 1 -a 0 -b 1 --dkd_alpha 1`, beta per pair as configs/cifar_dkd.py
(2 for resnet56 -> resnet20, the script's `--dkd_beta 2`), no warm-up. The instance-wise
temperature is `--config.method.temperature_module=instance` (KD base only).
arg: 'PAIR', 'kd,PAIR' or 'dkd,PAIR' (PAIR from configs/cifar_common.PAIRS or 'smoke').
"""
from configs import cifar_common, cifar_dkd

_SOURCE = "CTKD (Li et al. AAAI 2023): zhengli97/CTKD scripts/run_cifar_distill.sh (METHODS.md 10)"


def get_config(arg="res32x4_res8x4"):
  base, _, pair = arg.rpartition(",")
  base = base or "kd"
  if base == "kd":
    method = dict(ce_weight=0.1, kd_weight=0.9, dkd_weight=0.0)
  elif base == "dkd":
    method = dict(ce_weight=1.0, kd_weight=0.0, dkd_weight=1.0, alpha=1.0, beta=8.0)
  else:
    raise ValueError(f"unknown base {base!r}; valid: kd, dkd")
  config = cifar_common.get_base(dict(name="ctkd", **method))
  config.source = _SOURCE + ("; DKD base: the script's DKD line, beta as mdistiller per pair"
                             if base == "dkd" else "")
  return cifar_common.for_pair(config, pair, cifar_dkd.BETA if base == "dkd" else None)
