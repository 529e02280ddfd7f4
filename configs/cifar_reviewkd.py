"""ReviewKD (Chen et al. CVPR 2021) on CIFAR-100, mdistiller's recipe (METHODS.md 6, 9).

  python main.py --config=configs/cifar_reviewkd.py:res32x4_res8x4 --workdir=runs/reviewkd_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'.

total = CE + min(1, (e+1)/20) w HCL, student features after ReLU (mdistiller
STU_PREACT False), mdistiller CFG.REVIEWKD defaults. mdistiller ships one CIFAR-100
yaml (configs/cifar100/reviewkd.yaml: resnet32x4 -> resnet8x4, w = 5; the per-pair
channels and sizes are its cfg.py defaults, which fit only that pair), so the weight of
every other pair is the one the ReviewKD authors published for it
(dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh, --kd-loss-weight; it agrees on
resnet32x4 -> resnet8x4), and mdistiller's default 1.0 for pairs they did not publish.
Channels and sizes come from the models (kd_jax.methods.reviewkd.review_layout).
"""
from configs import cifar_common

# The authors' reviewKD.sh: pair -> --kd-loss-weight.
WEIGHTS = {
    "res56_res20": 0.6,
    "res110_res32": 1.0,
    "res32x4_res8x4": 5.0,
    "wrn40_2_wrn16_2": 5.0,
    "wrn40_2_wrn40_1": 5.0,
    "wrn40_2_shuv1": 5.0,
    "res32x4_shuv1": 5.0,
    "res32x4_shuv2": 8.0,
}


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="reviewkd", ce_weight=1.0, reviewkd_weight=1.0,
                                      warmup_epochs=20, student_preact=False,
                                      max_mid_channel=512))
  config.source = ("ReviewKD (Chen et al. CVPR 2021): mdistiller ReviewKD.py, "
                   "configs/cifar100/reviewkd.yaml (METHODS.md 9)")
  if arg in WEIGHTS and arg != "res32x4_res8x4":
    config.source += "; weight from the authors' CIFAR-100/script/reviewKD.sh"
  elif arg in cifar_common.PAIRS and arg not in WEIGHTS:
    config.source += "; no published weight for this pair: mdistiller's default 1.0"
  overrides = {pair: dict(reviewkd_weight=weight) for pair, weight in WEIGHTS.items()}
  return cifar_common.for_pair(config, arg, overrides)
