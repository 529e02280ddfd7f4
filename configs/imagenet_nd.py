"""KD++ (ND) on ImageNet: CE + kd_w KD(T=1) warm-up + nd_w ND (METHODS.md 5).

  python main.py --config=configs/imagenet_nd.py:res34_res18 --workdir=runs/in_kdnd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

Weights (kd_w, nd_w): ResNet34->ResNet18 2.5, 1.0; ResNet50->MobileNetV1 4.0, 1.0. The
teacher class means take one pass of the training pipeline, cached beside the teacher.
KD temperature 1 as the ImageNet KD recipe (the authors' ImageNet temperature was not
checked here); warm-up over the first epoch. arg: res34_res18, res50_mbv1 or smoke.
"""
from configs import imagenet_common

WEIGHTS = {"res34_res18": dict(kd_weight=2.5, nd_weight=1.0),
           "res50_mbv1": dict(kd_weight=4.0, nd_weight=1.0)}


def get_config(arg="res34_res18"):
  return imagenet_common.get_base(dict(name="kd_nd", ce_weight=1.0, kd_weight=2.5,
                                       temperature=1.0, nd_weight=1.0, warmup_epochs=1),
                                  arg, WEIGHTS)
