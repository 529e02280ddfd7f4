"""KD++ and DKD++ (ND) on ImageNet (METHODS.md 5).

  python main.py --config=configs/imagenet_nd.py:kd_nd,res34_res18 --workdir=runs/in_kdnd_res34_res18 \
      --config.data.data_dir=DATA_DIR --config.teacher.checkpoint=resnet34-b627a593.pth

  python main.py --config=configs/imagenet_nd.py:kd_nd,vitb_res18 --workdir=runs/in_kdnd_vitb_res18 \
      --config.data.data_dir=DATA_DIR

arg: 'BASE,PAIR' with BASE kd_nd (KD++) or dkd_nd (DKD++), PAIR res34_res18, res50_mbv1,
vits_res18, vitb_res18, smoke or smoke_vit; a bare PAIR means kd_nd. The authors' ImageNet code
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
"""
from configs import imagenet_common

BASES = {
    "kd_nd": dict(name="kd_nd", ce_weight=1.0, kd_weight=2.5, temperature=1.0, nd_weight=1.0,
                  warmup_epochs=5, head_init="normal_0.01"),
    "dkd_nd": dict(name="dkd_nd", ce_weight=1.0, alpha=0.8, beta=0.5, temperature=1.0,
                   nd_weight=1.0, warmup_epochs=5, warmup_nd=True, head_init="normal_0.01"),
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
}

# Pairs whose student the authors wrap in EmbTrans (whose init loop re-draws its classifier).
EMBTRANS_WRAPPED = ("res50_mbv1",)


def get_config(arg="kd_nd,res34_res18"):
  base, _, pair = arg.rpartition(",") if "," in arg else ("kd_nd", "", arg)
  if base not in BASES:
    raise ValueError(f"unknown ND base {base!r}; valid: {', '.join(BASES)}")
  config = imagenet_common.get_base(BASES[base], pair, WEIGHTS[base])
  config.optim.nesterov = True
  if pair in EMBTRANS_WRAPPED or imagenet_common.is_vit_pair(pair):
    config.student.classifier_init = "normal_0.01"
  config.source = ("ND authors' ImageNet/train_kd.py, train_dkd.py, train.sh "
                   "(WangYZ1608/Knowledge-Distillation-via-ND; METHODS.md 5)")
  return config
