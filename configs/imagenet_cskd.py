"""CSKD + CSWT (single view) on ImageNet, with the CIFAR method settings (T = 4, weight 2).

  python main.py --config=configs/imagenet_cskd.py:res34_res18 --workdir=runs/in_cskd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

No ImageNet setting of CSKD was available to us: these are the CIFAR values. arg:
res34_res18, res50_mbv1 or smoke.
"""
from configs import imagenet_common


def get_config(arg="res34_res18"):
  return imagenet_common.get_base(dict(name="cskd", ce_weight=1.0, weight=2.0, temperature=4.0,
                                       cswt=True, t_low=2.0, t_high=6.0), arg)
