"""ND (feature norm and direction) on CIFAR-100: the authors' ++ runs, and ND on any base
(METHODS.md 5, 12).

  python main.py --config=configs/cifar_nd.py:kd_nd,res32x4_res8x4 --workdir=runs/kdnd_res32x4_res8x4
  python main.py --config=configs/cifar_nd.py:crd_nd,res32x4_res8x4 --workdir=runs/crdnd_res32x4_res8x4

arg: 'BASE_nd,ARG'. The authors' runs: kd_nd (KD++), dkd_nd (DKD++), dist_nd (DIST++),
reviewkd_nd (ReviewKD++), and cskd_nd (CSKD+ND, new, on the same recipe), ARG a pair of
configs/cifar_common.PAIRS; or 'smoke' / 'BASE_nd,smoke'. Any other method with a teacher
(crd_nd, mlkd_nd, fitnet_nd, ctkd_nd, ...): its own config (configs/cifar_BASE.py:ARG, e.g.
'ctkd_nd,dkd,res32x4_res8x4') with ND added at nd_weight 1, no warm-up (unpublished; ND's
head and class means as below; mlkd_nd / cskd_mv_nd: ND on the weak view). ce_nd is
refused: cross-entropy alone has no teacher.

The authors' recipe (WangYZ1608/Knowledge-Distillation-via-ND, CIFAR/train_cifar.sh and
train_cifar_kd.py; CIFAR/DIST++/train_dist.py + .sh; CIFAR/ReviewKD++/train_reviewkd.py +
.sh): `--batch_size 64` per GPU, multiplied by the 2 GPUs of `--gpus` under
nn.DataParallel, so a global batch of 128 whose BatchNorms see groups of 64; lr 0.1 (0.02
in the published ShuffleV1 DKD++ and ShuffleV2 DIST++ commands, the only commands with
another lr); SGD Nesterov, wd 5e-4, 240 epochs, decay x0.1 at 150/180/210; the loss
warm-up min(1, e/20) with e counted from 0 (KD++ / DIST++ / ReviewKD++ on their KD term,
DKD++ on DKD). Their model files initialise the student's classifier: CIFAR ResNets draw
weight and bias from N(0, 0.01^2); the students they wrap with a projection head (wrn_40_1,
MobileNetV2, ShuffleV1/V2) get every Linear bias zeroed. ReviewKD++'s wrapper zeroes
every Linear bias of its student, so there a ResNet student keeps N(0, 0.01^2) weights with
a zero bias. Per-pair weights are the authors' (kd_weight, nd_weight | alpha, beta, nd_weight
| DIST's kd factor as beta = gamma, nd | reviewkd_weight, nd); pairs they did not publish
keep the defaults. Teacher class means are computed once and cached beside the teacher.
"""
import importlib

from configs import cifar_common
from kd_jax import methods

BASES = {
    "kd_nd": dict(name="kd_nd", ce_weight=1.0, kd_weight=1.0, temperature=4.0, nd_weight=2.0,
                  warmup_epochs=20),
    "dkd_nd": dict(name="dkd_nd", ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0,
                   nd_weight=1.0, warmup_epochs=20),
    "cskd_nd": dict(name="cskd_nd", ce_weight=1.0, weight=2.0, temperature=4.0, cswt=True,
                    t_low=2.0, t_high=6.0, nd_weight=1.0),
    # train_dist.py: DIST(beta=1, gamma=1, tau=--t 4) x kd factor x min(1, e/--warm_up 20).
    "dist_nd": dict(name="dist_nd", ce_weight=1.0, beta=1.0, gamma=1.0, temperature=4.0,
                    warmup_epochs=20, nd_weight=1.0),
    # train_reviewkd.py: hcl(...) x min(1, e/--warm_up 20) x kd factor; student after ReLU.
    "reviewkd_nd": dict(name="reviewkd_nd", ce_weight=1.0, reviewkd_weight=1.0,
                        warmup_epochs=20, student_preact=False, max_mid_channel=512,
                        nd_weight=1.0),
}
WEIGHTS = {  # METHODS.md sections 5 and 12
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
    "dist_nd": {pair: dict(beta=kd, gamma=kd, nd_weight=nd) for pair, (kd, nd) in {
        "res56_res20": (2.0, 1.0), "res32x4_res8x4": (1.5, 4.0),
        "wrn40_2_wrn40_1": (2.5, 3.0), "res50_mbv2": (7.0, 1.0),
        "res32x4_shuv1": (2.5, 3.0), "res32x4_shuv2": (3.0, 4.0)}.items()},
    "reviewkd_nd": {pair: dict(reviewkd_weight=kd, nd_weight=nd) for pair, (kd, nd) in {
        "res56_res20": (1.2, 1.0), "res32x4_res8x4": (8.0, 1.0),
        "wrn40_2_wrn40_1": (5.0, 4.0), "res50_mbv2": (6.0, 2.0),
        "res32x4_shuv1": (7.0, 1.0), "res32x4_shuv2": (8.0, 1.5)}.items()},
}
_KD_PP = "CIFAR/train_cifar.sh and train_cifar_kd.py"
SOURCES = {  # what the recipe card's 'follows' line names
    "kd_nd": (_KD_PP, "5"), "dkd_nd": (_KD_PP, "5"), "cskd_nd": (_KD_PP, "5"),
    "dist_nd": ("CIFAR/DIST++/train_dist.py and train_dist.sh", "12"),
    "reviewkd_nd": ("CIFAR/ReviewKD++/train_reviewkd.py, train_reviewkd.sh and "
                    "models/reviewkd.py", "12"),
}

# The published commands' lr where it is not 0.1: train_cifar.sh's DKD++ and train_dist.sh.
LR = {("dkd_nd", "res32x4_shuv1"): 0.02, ("dist_nd", "res32x4_shuv2"): 0.02}
HEAD_STUDENTS = ("wrn_40_1", "MobileNetV2", "ShuffleV1", "ShuffleV2")  # EmbTrans-wrapped


def classifier_init(student, base="kd_nd"):
  """How the authors' CIFAR model files (and wrappers) leave the student's classifier."""
  if student.startswith("resnet"):
    return "normal_0.01_zero_bias" if base == "reviewkd_nd" else "normal_0.01"
  return "zero_bias" if student in HEAD_STUDENTS or base == "reviewkd_nd" else "zoo"


def get_config(arg="kd_nd,res32x4_res8x4"):
  base, _, rest = arg.partition(",") if "," in arg else ("kd_nd", "", arg)
  methods.check_not_refused(base)
  if base in BASES:
    return authors_recipe(base, rest)
  if not base.endswith("_nd") or base not in methods.METHODS:
    raise ValueError(f"unknown ND base {base!r}; valid: "
                     f"{', '.join(n for n in methods.METHODS if n.endswith('_nd'))}")
  return on_base_recipe(base, rest)


def authors_recipe(base, pair):
  """The ND authors' ++ run of `base` on `pair` (the module docstring)."""
  config = cifar_common.get_base(BASES[base])
  config = cifar_common.for_pair(config, pair, WEIGHTS[base])
  config.student.classifier_init = classifier_init(config.student.model, base)
  config.student.bn_group_size = 64
  config.optim.nesterov = True
  if pair != "smoke":
    config.batch_size = 128
    config.optim.lr = LR.get((base, pair), 0.1)
    code, section = SOURCES[base]
    config.source = (f"ND authors' {code} (WangYZ1608/Knowledge-Distillation-via-ND; "
                     f"METHODS.md {section})")
    if pair not in WEIGHTS[base]:
      config.source += "; no published weights for this pair: the method's defaults"
  return config


def on_base_recipe(name, arg):
  """configs/cifar_BASE.py:ARG with ND added (nd_weight 1, no warm-up): unpublished."""
  base = name[:-len("_nd")]
  config = importlib.import_module(f"configs.cifar_{base}").get_config(arg)
  fields = {key: value for key, value in config.method.items() if key != "name"}
  config.method = type(config.method)(methods.defaults(name, **fields))
  config.source += "; + ND (METHODS.md 12, unpublished: nd_weight 1)"
  return config
