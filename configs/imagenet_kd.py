"""KD on ImageNet (mdistiller recipe: T = 1, 0.5 CE + 0.5 KD).

  python main.py --config=configs/imagenet_kd.py:res34_res18 --workdir=runs/in_kd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

arg: res34_res18, res50_mbv1, vits_res18, vitb_res18 (ViT teachers, configs/imagenet_common.py),
smoke or smoke_vit. The ND authors publish no command for their ViT -> ResNet-18 KD baseline
(README table); kd_jax runs it with this file's recipe, as for the CNN pairs.
"""
from configs import imagenet_common


def get_config(arg="res34_res18"):
  return imagenet_common.get_base(dict(name="kd", ce_weight=0.5, kd_weight=0.5, temperature=1.0,
                                       standardize=False), arg)
