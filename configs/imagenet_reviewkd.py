"""ReviewKD (Chen et al. CVPR 2021) on ImageNet, mdistiller's recipe (METHODS.md 9, 12).

  python main.py --config=configs/imagenet_reviewkd.py:res34_res18 --workdir=runs/in_reviewkd_res34_res18 \
      --config.data.data_dir=DATA_DIR

arg: res34_res18, res50_mbv1 or smoke. mdistiller configs/imagenet/r34_r18/reviewkd.yaml and
r50_mv1/reviewkd.yaml: batch 256, lr 0.1 x0.1 at 30/60/90, wd 1e-4, SGD momentum 0.9 (not
Nesterov), 100 epochs; CE 1 + min(1, (e+1)/1) w HCL (the one-epoch warm-up is full from
the first epoch), w = 1 (R34->R18) / 8 (R50->MV1); both sides' levels pre-ReLU
(STU_PREACT); the ABFs' middle width 512 (ResNet-18) / 256 (MobileNetV1, MAX_MID_CHANNEL).
Channels and sizes come from the models (kd_jax.methods.reviewkd.review_layout). ReviewKD++
(ND on top, the ND authors' ImageNet/ReviewKD++ recipe) is configs/imagenet_nd.py:reviewkd_nd.
"""
from configs import imagenet_common

WEIGHTS = {"res34_res18": dict(reviewkd_weight=1.0, max_mid_channel=512),
           "res50_mbv1": dict(reviewkd_weight=8.0, max_mid_channel=256)}


def get_config(arg="res34_res18"):
  config = imagenet_common.get_base(dict(name="reviewkd", ce_weight=1.0, reviewkd_weight=1.0,
                                         warmup_epochs=1, student_preact=True,
                                         max_mid_channel=512), arg, WEIGHTS)
  if arg != "smoke":
    config.batch_size, config.optim.lr = 256, 0.1
    config.source = ("ReviewKD: mdistiller configs/imagenet/{r34_r18,r50_mv1}/reviewkd.yaml "
                     "(METHODS.md 9)")
  return config
