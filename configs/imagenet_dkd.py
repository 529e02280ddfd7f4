"""DKD on ImageNet: T = 1, warm-up 1 epoch, beta 0.5 (ResNet34->18) / 2.0 (ResNet50->MBV1).

  python main.py --config=configs/imagenet_dkd.py:res34_res18 --workdir=runs/in_dkd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

arg: res34_res18, res50_mbv1, vits_res18, vitb_res18 (ViT teachers, configs/imagenet_common.py),
smoke or smoke_vit. The ND authors publish no command for their ViT -> ResNet-18 DKD baseline
(README table); kd_jax runs it with this file's recipe, as for the CNN pairs.
"""
from configs import imagenet_common

BETA = {"res34_res18": {"beta": 0.5}, "res50_mbv1": {"beta": 2.0}}


def get_config(arg="res34_res18"):
  return imagenet_common.get_base(dict(name="dkd", ce_weight=1.0, alpha=1.0, beta=0.5,
                                       temperature=1.0, warmup_epochs=1, standardize=False),
                                  arg, BETA)
