"""VID (Ahn et al. CVPR 2019) on CIFAR-100, mdistiller recipe: CE + VID over feats[1:].

  python main.py --config=configs/cifar_vid.py:res32x4_res8x4 --workdir=runs/vid_res32x4_res8x4

arg: a pair of configs/cifar_common.PAIRS or 'smoke'. mdistiller configs/cifar100/vid.yaml
and engine/cfg.py: CE weight 1, VID weight 1, init_pred_var 5, eps 1e-5; the variance is
learned (RepDistiller, the paper); `--config.method.learn_variance=False` keeps it fixed
as mdistiller's code does (kd_jax/methods/vid.py).
"""
from configs import cifar_common


def get_config(arg="res32x4_res8x4"):
  config = cifar_common.get_base(dict(name="vid", ce_weight=1.0, feat_weight=1.0,
                                      init_pred_var=5.0, eps=1e-5, learn_variance=True))
  config.source = ("VID (Ahn et al. 2019): mdistiller configs/cifar100/vid.yaml, "
                   "engine/cfg.py (METHODS.md 9)")
  return cifar_common.for_pair(config, arg)
