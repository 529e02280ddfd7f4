"""KD++ and DKD++ (ND) on ImageNet (METHODS.md 5).

  python main.py --config=configs/imagenet_nd.py:kd_nd,res34_res18 --workdir=runs/in_kdnd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

  python main.py --config=configs/imagenet_nd.py:kd_nd,vitb_res18 --workdir=runs/in_kdnd_vitb_res18 \
      --config.data.data_dir=DATA_DIR

arg: 'BASE,PAIR' with BASE kd_nd (KD++), dkd_nd (DKD++) or reviewkd_nd (ReviewKD++, CNN pairs
only), PAIR res34_res18, res50_mbv1, vits_res18, vitb_res18, smoke or smoke_vit; a bare PAIR
means kd_nd. The authors' ImageNet code
(WangYZ1608/Knowledge-Distillation-via-ND, ImageNet/train_kd.py, train_dkd.py, train.sh):
the loss warm-up min(1, e/5) with e counted from 0 (KD++: on the KD term; DKD++: on the
DKD *and* the ND term), T = 1, SGD Nesterov, batch 512, lr 0.2 x0.1 at 30/60/90; the
projection head's Linear (ResNet50 -> MobileNetV1 only) drawn from N(0, 0.01^2). Weights
KD++ (kd, nd): R34->R18 2.5, 1.0; R50->MV1 4.0, 1.0. DKD++ (alpha, beta, nd): R34->R18
0.8, 0.5, 1.0; R50->MV1 0.8, 1.0, 1.0. Teacher class means take one pass of the training
pipeline, cached beside the teacher. Where the authors wrap the student in EmbTrans
(R50->MV1 and the ViT pairs: train_kd.py wraps when the student is MobileNetV1 or the
teacher a ResNet-50/101/152), its init loop also draws the student's own classifier from
N(0, 0.01^2) (student.classifier_init = normal_0.01); R34->R18 is not wrapped and keeps
torchvision's classifier init.

ViT -> ResNet-18 (ND ImageNet/ViT/train_kd.py, train_dkd.py, train.sh; same recipe as
above): KD++ (kd, nd) ViT-S 1.5, 1.0; ViT-B 2.0, 1.0. DKD++ (alpha, beta, nd) ViT-S 1.0,
1.0, 2.0; ViT-B 1.4, 0.5, 2.0 -- the per-teacher table in train.sh's comments; its example
command runs `--teacher vits` with 1.4/0.5 and passes `--norm_loss_factor`, a flag the
script does not define (argparse would refuse it), so the table is what kd_jax follows. The
projection head BN1d(512) -> Dropout(0.5) -> Linear(512, 384 | 768) is always there, and
the authors' EmbTrans init loop runs over the wrapped student too, so the student's `fc`
is also drawn from N(0, 0.01^2) (student.classifier_init = normal_0.01). Their scripts
load `ckpt/vitb/center_emb_train.json` whatever the teacher (ViT-S needs its own 384-d
means, which kd_jax computes from the teacher).

ReviewKD++ (ND ImageNet/ReviewKD++/train_reviewkd.py, train_reviewkd.sh, models/reviewkd.py):
CE + min(1, e/5) w HCL + nd ND, e from 0, batch 512, lr 0.2, Nesterov, wd 1e-4, x0.1 at
30/60/90, 100 epochs; both sides' levels pre-ReLU (their ResNets' last block of a stage
skips its ReLU, MobileNetV1 extract_feature(preReLU=True)), the teacher's four stages plus
its pooled feature against the student's; ABF middle width 512 (ResNet-18) / 256
(MobileNetV1). Weights (w, nd) from train_reviewkd.sh's table: R34->R18 1.0, 3.0;
R50->MV1 8.0, 4.0 (its example command, R50->MV1 with 6.0 / 1.0, calls train_dkd.py, not
this script). The ReviewKD wrapper's init loop zeroes every Linear bias, the student's
classifier's included, and leaves the projection head's weight at PyTorch's default
(head_init and student.classifier_init zero_bias).
"""
from configs import imagenet_common

BASES = {
    "kd_nd": dict(name="kd_nd", ce_weight=1.0, kd_weight=2.5, temperature=1.0, nd_weight=1.0,
                  warmup_epochs=5, head_init="normal_0.01"),
    "dkd_nd": dict(name="dkd_nd", ce_weight=1.0, alpha=0.8, beta=0.5, temperature=1.0,
                   nd_weight=1.0, warmup_epochs=5, warmup_nd=True, head_init="normal_0.01"),
    "reviewkd_nd": dict(name="reviewkd_nd", ce_weight=1.0, reviewkd_weight=1.0, warmup_epochs=5,
                        student_preact=True, max_mid_channel=512, nd_weight=1.0,
                        head_init="zero_bias"),
}
WEIGHTS = {
    "kd_nd": {"res34_res18": dict(kd_weight=2.5, nd_weight=1.0),
              "res50_mbv1": dict(kd_weight=4.0, nd_weight=1.0),
              "vits_res18": dict(kd_weight=1.5, nd_weight=1.0),
              "vitb_res18": dict(kd_weight=2.0, nd_weight=1.0)},
    "dkd_nd": {"res34_res18": dict(alpha=0.8, beta=0.5, nd_weight=1.0),
               "res50_mbv1": dict(alpha=0.8, beta=1.0, nd_weight=1.0),
               "vits_res18": dict(alpha=1.0, beta=1.0, nd_weight=2.0),
               "vitb_res18": dict(alpha=1.4, beta=0.5, nd_weight=2.0)},
    "reviewkd_nd": {"res34_res18": dict(reviewkd_weight=1.0, nd_weight=3.0),
                    "res50_mbv1": dict(reviewkd_weight=8.0, nd_weight=4.0,
                                       max_mid_channel=256)},
}

# Pairs whose student the authors wrap in EmbTrans (whose init loop re-draws its classifier).
EMBTRANS_WRAPPED = ("res50_mbv1",)


def get_config(arg="kd_nd,res34_res18"):
  base, _, pair = arg.rpartition(",") if "," in arg else ("kd_nd", "", arg)
  if base not in BASES:
    raise ValueError(f"unknown ND base {base!r}; valid: {', '.join(BASES)}")
  if base == "reviewkd_nd" and imagenet_common.is_vit_pair(pair):
    raise ValueError(f"reviewkd_nd runs on the CNN pairs (res34_res18, res50_mbv1, smoke), "
                     f"not {pair!r}: the ND authors' ReviewKD++ has no ViT teacher")
  config = imagenet_common.get_base(BASES[base], pair, WEIGHTS[base])
  config.optim.nesterov = True
  if base == "reviewkd_nd":
    config.student.classifier_init = "zero_bias"
    config.source = ("ND authors' ImageNet/ReviewKD++/train_reviewkd.py, train_reviewkd.sh "
                     "(WangYZ1608/Knowledge-Distillation-via-ND; METHODS.md 12)")
    return config
  if pair in EMBTRANS_WRAPPED or imagenet_common.is_vit_pair(pair):
    config.student.classifier_init = "normal_0.01"
  config.source = ("ND authors' ImageNet/train_kd.py, train_dkd.py, train.sh "
                   "(WangYZ1608/Knowledge-Distillation-via-ND; METHODS.md 5)")
  return config
