"""CRD (Tian et al. ICLR 2020) on CIFAR-100, mdistiller recipe (METHODS.md 9).

  python main.py --config=configs/cifar_crd.py:res32x4_res8x4 --workdir=runs/crd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'. Weights and NCE settings are
mdistiller's (engine/cfg.py CRD, configs/cifar100/crd.yaml): 1.0 CE + 0.8 CRD, 128-d
embeddings, K = 16384 negatives, NCE temperature 0.07, bank momentum 0.5, no KD term
(RepDistiller's `-a 0 -b 0.8`); CRD+KD is `--config.method.kd_weight=1.0`. The smoke run
draws 128 negatives instead of 16384 (its training split has 512 examples).
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="crd", ce_weight=1.0, crd_weight=0.8, kd_weight=0.0,
                                      feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5,
                                      replacement="if_needed"))
  config.source = ("CRD (Tian et al. 2020): mdistiller distillers/CRD.py, engine/cfg.py and "
                   "configs/cifar100/crd.yaml (METHODS.md 9)")
  config = cifar_common.for_pair(config, arg)
  if arg == "smoke":
    config.method.nce_k = 128
  return config
