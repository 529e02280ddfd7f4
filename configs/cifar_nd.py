"""ND (feature norm and direction) with KD, DKD or CSKD on CIFAR-100 (METHODS.md 5).

  python main.py --config=configs/cifar_nd.py:kd_nd,res32x4_res8x4 --workdir=runs/kdnd_res32x4_res8x4

arg: 'BASE,PAIR' with BASE one of kd_nd (KD++), dkd_nd (DKD++), cskd_nd (CSKD+ND, new),
PAIR a pair of configs/cifar_common.PAIRS; or 'smoke' (KD++) / 'BASE,smoke'.

The authors' recipe (WangYZ1608/Knowledge-Distillation-via-ND, CIFAR/train_cifar.sh and
train_cifar_kd.py): batch 64 per GPU on 2 GPUs under nn.DataParallel, so a global batch
of 128 whose BatchNorms see groups of 64; lr 0.1 (0.02 in the published ShuffleV1 DKD++
command, the only command with another lr); SGD Nesterov, wd 5e-4, 240 epochs, decay
150/180/210. Their model files initialise the student's classifier: CIFAR ResNets draw
weight and bias from N(0, 0.01^2); the students they wrap with a projection head (wrn_40_1,
MobileNetV2, ShuffleV1/V2) get every Linear bias zeroed. Per-pair weights are the
authors' (kd_weight, nd_weight | alpha, beta, nd_weight); pairs they did not publish keep
the defaults. Teacher class means are computed once and cached beside the teacher.
"""
from configs import cifar_common

BASES = {
    "kd_nd": dict(name="kd_nd", ce_weight=1.0, kd_weight=1.0, temperature=4.0, nd_weight=2.0,
                  warmup_epochs=20),
    "dkd_nd": dict(name="dkd_nd", ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0,
                   nd_weight=1.0, warmup_epochs=20),
    "cskd_nd": dict(name="cskd_nd", ce_weight=1.0, weight=2.0, temperature=4.0, cswt=True,
                    t_low=2.0, t_high=6.0, nd_weight=1.0),
}
WEIGHTS = {  # METHODS.md section 5
    "kd_nd": {
        "res56_res20": dict(kd_weight=1.0, nd_weight=2.0),
        "res32x4_res8x4": dict(kd_weight=3.5, nd_weight=2.0),
        "wrn40_2_wrn40_1": dict(kd_weight=1.0, nd_weight=1.5),
        "res50_mbv2": dict(kd_weight=3.0, nd_weight=0.5),
        "res32x4_shuv1": dict(kd_weight=2.5, nd_weight=1.5),
        "res32x4_shuv2": dict(kd_weight=4.0, nd_weight=0.5),
    },
    "dkd_nd": {
        "res56_res20": dict(alpha=2.5, beta=4.0, nd_weight=3.5),
        "res32x4_res8x4": dict(alpha=2.0, beta=8.0, nd_weight=0.5),
        "wrn40_2_wrn40_1": dict(alpha=1.0, beta=6.0, nd_weight=1.0),
        "res50_mbv2": dict(alpha=0.5, beta=8.0, nd_weight=1.0),
        "res32x4_shuv1": dict(alpha=0.5, beta=8.0, nd_weight=4.0),
        "res32x4_shuv2": dict(alpha=0.5, beta=6.0, nd_weight=0.5),
    },
    "cskd_nd": {},
}


LR = {("dkd_nd", "res32x4_shuv1"): 0.02}  # train_cifar.sh's DKD++ command; else 0.1
HEAD_STUDENTS = ("wrn_40_1", "MobileNetV2", "ShuffleV1", "ShuffleV2")  # EmbTrans-wrapped


def classifier_init(student):
  """How the authors' CIFAR model files leave the student's classifier (see above)."""
  if student.startswith("resnet"):
    return "normal_0.01"
  return "zero_bias" if student in HEAD_STUDENTS else "zoo"


def get_config(arg="kd_nd,res32x4_res8x4"):
  base, _, pair = arg.rpartition(",") if "," in arg else ("kd_nd", "", arg)
  if base not in BASES:
    raise ValueError(f"unknown ND base {base!r}; valid: {', '.join(BASES)}")
  config = cifar_common.get_base(BASES[base])
  config = cifar_common.for_pair(config, pair, WEIGHTS[base])
  config.student.classifier_init = classifier_init(config.student.model)
  config.student.bn_group_size = 64
  config.optim.nesterov = True
  if pair != "smoke":
    config.batch_size = 128
    config.optim.lr = LR.get((base, pair), 0.1)
    config.source = ("ND authors' CIFAR/train_cifar.sh and train_cifar_kd.py "
                     "(WangYZ1608/Knowledge-Distillation-via-ND; METHODS.md 5)")
    if pair not in WEIGHTS[base]:
      config.source += "; no published weights for this pair: the method's defaults"
  return config
