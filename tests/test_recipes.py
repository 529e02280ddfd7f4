"""Recipe cards of every config x pair pinned against tables written by hand from METHODS.md
and the authors' code (sections 2-6b), never from configs/: a recipe cannot drift silently.
"""
import subprocess
import sys

import pytest

import importlib

from configs import (cifar_ce, cifar_cskd, cifar_cskd_mv, cifar_ctkd, cifar_dist, cifar_dkd,
                     cifar_kd, cifar_ls, cifar_mlkd, cifar_nd, imagenet_dkd, imagenet_kd,
                     imagenet_nd, imagenet_reviewkd)
from kd_jax import methods, models
from kd_jax.tools import recipe

# METHODS.md 6b: the benchmark's 11 pairs and the LS/MLKD tables' 5 more.
PAIRS = {
    "res56_res20": ("resnet56", "resnet20"), "res110_res32": ("resnet110", "resnet32"),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4"), "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2"),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1"), "vgg13_vgg8": ("vgg13", "vgg8"),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1"), "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1"),
    "vgg13_mv2": ("vgg13", "MobileNetV2"), "res50_mbv2": ("ResNet50", "MobileNetV2"),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2"), "res110_res20": ("resnet110", "resnet20"),
    "res32x4_wrn16_2": ("resnet32x4", "wrn_16_2"), "res32x4_wrn40_2": ("resnet32x4", "wrn_40_2"),
    "wrn40_2_res8x4": ("wrn_40_2", "resnet8x4"), "wrn40_2_mv2": ("wrn_40_2", "MobileNetV2"),
}
SMALL_LR = ("ShuffleV1", "ShuffleV2", "MobileNetV2")  # METHODS.md 6: lr 0.01
DKD_BETA = {"res56_res20": 2, "res110_res32": 2, "vgg13_vgg8": 6, "wrn40_2_wrn16_2": 6,
            "wrn40_2_wrn40_1": 6, "vgg13_mv2": 6}  # METHODS.md 3; 8 otherwise
# METHODS.md 5: KD++ (kd_w, nd_w) and DKD++ (alpha, beta, nd_w) per pair.
KD_ND = {"res56_res20": (1.0, 2.0), "res32x4_res8x4": (3.5, 2.0), "wrn40_2_wrn40_1": (1.0, 1.5),
         "res50_mbv2": (3.0, 0.5), "res32x4_shuv1": (2.5, 1.5), "res32x4_shuv2": (4.0, 0.5)}
DKD_ND = {"res56_res20": (2.5, 4.0, 3.5), "res32x4_res8x4": (2.0, 8.0, 0.5),
          "wrn40_2_wrn40_1": (1.0, 6.0, 1.0), "res50_mbv2": (0.5, 8.0, 1.0),
          "res32x4_shuv1": (0.5, 8.0, 4.0), "res32x4_shuv2": (0.5, 6.0, 0.5)}
# METHODS.md 12: DIST++ (kd, nd, lr) from CIFAR/DIST++/train_dist.sh; ReviewKD++ (kd, nd)
# from CIFAR/ReviewKD++/train_reviewkd.sh.
DIST_ND = {"res56_res20": (2.0, 1.0, 0.1), "res32x4_res8x4": (1.5, 4.0, 0.1),
           "wrn40_2_wrn40_1": (2.5, 3.0, 0.1), "res50_mbv2": (7.0, 1.0, 0.1),
           "res32x4_shuv1": (2.5, 3.0, 0.1), "res32x4_shuv2": (3.0, 4.0, 0.02)}
REVIEWKD_ND = {"res56_res20": (1.2, 1.0), "res32x4_res8x4": (8.0, 1.0),
               "wrn40_2_wrn40_1": (5.0, 4.0), "res50_mbv2": (6.0, 2.0),
               "res32x4_shuv1": (7.0, 1.0), "res32x4_shuv2": (8.0, 1.5)}
# METHODS.md 12, ND README: DIST, DIST++, ReviewKD++.
PUBLISHED_ND = {"res56_res20": (71.78, 72.52, 72.05), "wrn40_2_wrn40_1": (74.42, 75.00, 75.66),
                "res32x4_res8x4": (75.79, 76.13, 76.07), "res50_mbv2": (69.17, 69.80, 70.45),
                "res32x4_shuv1": (75.23, 75.60, 77.68), "res32x4_shuv2": (76.08, 76.64, 77.93)}
# METHODS.md 3b, from the LS repository's log names: KD+LS (T, W); DKD+LS (T, W, beta).
KD_LS = {"res56_res20": (2, 9), "res110_res32": (2, 9), "res32x4_res8x4": (2, 9),
         "wrn40_2_wrn16_2": (2, 9), "wrn40_2_wrn40_1": (2, 9), "vgg13_vgg8": (3, 9),
         "vgg13_mv2": (3, 9), "res50_mbv2": (3, 1), "res32x4_shuv2": (2, 9),
         "res110_res20": (4, 12), "res32x4_wrn16_2": (3, 9), "res32x4_wrn40_2": (3, 9),
         "wrn40_2_res8x4": (2, 9), "wrn40_2_mv2": (3, 9)}
DKD_LS = {"res56_res20": (3, 18, 2), "res110_res32": (2, 15, 2), "res32x4_res8x4": (2, 9, 8),
          "wrn40_2_wrn16_2": (2, 12, 2), "wrn40_2_wrn40_1": (2, 12, 2), "vgg13_vgg8": (2, 15, 2),
          "vgg13_mv2": (3, 9, 2), "res50_mbv2": (2, 15, 2), "res32x4_shuv2": (2, 9, 8),
          "res110_res20": (2, 15, 2), "res32x4_wrn16_2": (2, 9, 2), "res32x4_wrn40_2": (2, 9, 8),
          "wrn40_2_res8x4": (2, 18, 2), "wrn40_2_mv2": (2, 15, 2)}
# MLKD (epochs, lr): Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml for
# the 11 pairs it has, the LS repository's configs/cifar100/mlkd/*.yaml for the other 5.
MLKD = {"res56_res20": (240, 0.025), "res110_res32": (240, 0.025), "res32x4_res8x4": (240, 0.025),
        "wrn40_2_wrn16_2": (240, 0.025), "wrn40_2_wrn40_1": (240, 0.025), "vgg13_vgg8": (240, 0.025),
        "res32x4_shuv1": (960, 0.01), "wrn40_2_shuv1": (480, 0.01), "vgg13_mv2": (480, 0.01),
        "res50_mbv2": (480, 0.01), "res32x4_shuv2": (960, 0.01), "res110_res20": (480, 0.025),
        "res32x4_wrn16_2": (480, 0.025), "res32x4_wrn40_2": (480, 0.025),
        "wrn40_2_res8x4": (480, 0.025), "wrn40_2_mv2": (480, 0.005)}
# MLKD+LS (T, W) from logs/MLKD/ of the LS repository (res56_res20, wrn40_2_mv2: no log).
MLKD_LS = {"res110_res32": (2, 9), "res32x4_res8x4": (2, 9), "wrn40_2_wrn16_2": (2, 9),
           "wrn40_2_wrn40_1": (2, 9), "vgg13_vgg8": (2, 6), "vgg13_mv2": (2, 6), "res50_mbv2": (2, 9),
           "res32x4_shuv2": (2, 6), "res110_res20": (2, 9), "res32x4_wrn16_2": (2, 9),
           "res32x4_wrn40_2": (2, 9), "wrn40_2_res8x4": (2, 9)}
SGD = "SGD momentum 0.9, weight decay 0.0005 on all parameters"
NESTEROV = "SGD momentum 0.9, Nesterov, weight decay 0.0005 on all parameters"
CSWT = "T_i = CSWT in [2, 6]"


def _lr(student, lr=0.05):
  return 0.01 if student in SMALL_LR else lr


def _card(module, arg):
  return dict(recipe.card(module.get_config(arg)))


def _check(card, *, lr, epochs, batch, loss, optimizer=SGD):
  steps = 50_000 // batch
  assert card["lr"] == f"{lr:g}, x0.1 at epochs 150, 180, 210"
  assert card["schedule"].startswith(f"{epochs} epochs x {steps} steps of batch {batch} ")
  assert card["optimizer"] == optimizer
  assert card["loss"].split(" (e: ")[0] == loss


@pytest.mark.parametrize("pair", PAIRS)
def test_logit_method_cards(pair):
  teacher, student = PAIRS[pair]
  for module, loss in (
      (cifar_kd, "0.1 CE + 0.9 KD(T=4)"),
      (cifar_dkd, f"1 CE + min(1, (e+1)/20) DKD(alpha=1, beta={DKD_BETA.get(pair, 8)}, T=4)"),
      (cifar_dist, "1 CE + DIST(beta=2, gamma=2, T=4)"),
      (cifar_cskd, f"1 CE + 2 [CSKD(T=4) + CSKD(T_i)], {CSWT}")):
    card = _card(module, pair)
    _check(card, lr=_lr(student), epochs=240, batch=64, loss=loss)
    assert card["student"].startswith(f"{student} (") and "whole batch" in card["student"]
    assert card["teacher"].startswith(
        f"{teacher} (download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth;")
    assert card["augmentation"] == "random crop 32 (pad 4) + horizontal flip"


@pytest.mark.parametrize("pair", PAIRS)
def test_multi_view_cskd_cards(pair):
  student = PAIRS[pair][1]
  card = _card(cifar_cskd_mv, pair)
  both = "(T=4) + {0}(T_i)]"
  loss = ("1 [CE(weak) + CE(strong)] + m 2 [CSKD_weak" + both.format("CSKD_weak")
          + " + 2 [CSKD_strong" + both.format("CSKD_strong") + " + c 1 [CC_weak"
          + both.format("CC_weak") + " + m 1 [BC_weak" + both.format("BC_weak"))
  _check(card, lr=_lr(student, 0.025), epochs=480, batch=64, loss=card["loss"])
  assert card["loss"].startswith(loss + f", {CSWT} from the weak view")
  assert card["augmentation"].endswith("RandAugment(2 ops) + cutout (public_code)")


def _mlkd_loss(temperature, weight):
  strong = f"KD_strong({temperature}) + KD_strong(3) + KD_strong(5) + KD_weak(2) + KD_weak(6)"
  return (f"0.1 [CE(weak) + CE(strong)] + {weight} sum_T [m KD_weak(T) + c CC_weak(T) + "
          f"m BC_weak(T)] + {weight} [{strong}], T in ({temperature}, 3, 5, 2, 6), m / c = "
          "sample / class confidence masks of the teacher's weak view")


@pytest.mark.parametrize("pair", PAIRS)
def test_mlkd_cards(pair):
  epochs, lr = MLKD[pair]
  card = _card(cifar_mlkd, pair)
  _check(card, lr=lr, epochs=epochs, batch=64, loss=_mlkd_loss(4, 0.9))
  assert card["augmentation"].endswith("RandAugment(2 ops) + cutout (public_code)")
  ls_only = ("res110_res20", "res32x4_wrn16_2", "res32x4_wrn40_2", "wrn40_2_res8x4", "wrn40_2_mv2")
  assert card["follows"].startswith(
      "sunshangquan/logit-standardization-KD configs/cifar100/mlkd/" if pair in ls_only
      else "Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/")


@pytest.mark.parametrize("pair", PAIRS)
def test_mlkd_logit_standardization_cards(pair):
  """LS's own MLKD configs: 480 epochs (960 for resnet32x4 -> ShuffleNet), lr 0.025, 0.01
  for small students and vgg13 -> vgg8, 0.005 for wrn_40_2 -> MobileNetV2."""
  student = PAIRS[pair][1]
  epochs = 960 if pair in ("res32x4_shuv1", "res32x4_shuv2") else 480
  lr = {"vgg13_vgg8": 0.01, "wrn40_2_mv2": 0.005}.get(pair, _lr(student, 0.025))
  temperature, weight = MLKD_LS.get(pair, (2, 9))
  card = _card(cifar_ls, f"mlkd,{pair}")
  _check(card, lr=lr, epochs=epochs, batch=64, loss=_mlkd_loss(temperature, weight)
         + ", KD terms on both sides' logits z-scored per sample (LS)")
  assert ("logs/MLKD/mlkd," in card["follows"]) == (pair in MLKD_LS)
  assert "schedule configs/cifar100/mlkd/" in card["follows"]


@pytest.mark.parametrize("pair", PAIRS)
def test_logit_standardization_cards(pair):
  student = PAIRS[pair][1]
  temperature, weight = KD_LS.get(pair, (2, 9))
  card = _card(cifar_ls, f"kd,{pair}")
  ls = ", both sides' logits z-scored per sample (LS)"
  _check(card, lr=_lr(student), epochs=240, batch=64,
         loss=f"0.1 CE + {weight} KD(T={temperature}){ls}")
  temperature, weight, beta = DKD_LS.get(pair, (2, 9, DKD_BETA.get(pair, 8)))
  card = _card(cifar_ls, f"dkd,{pair}")
  _check(card, lr=_lr(student), epochs=240, batch=64,
         loss=f"1 CE + min(1, (e+1)/20) DKD(alpha={weight}, beta={weight * beta}, "
              f"T={temperature}){ls}")
  assert ("logs/DKD/dkd," in card["follows"]) == (pair in DKD_LS)


# METHODS.md 10, zhengli97/CTKD scripts/run_cifar_distill.sh; CTKD+LS from the LS
# repository's logs/CTKD/ctkd,TEACHER,STUDENT,2,9.txt (all 14 LS pairs).
CTKD = "T learnt in ({0}, {1}) through gradient reversal (CTKD)"
CTKD_TEMPERATURE = ("one learnable parameter r (init 1); T = {0} + 20 sigmoid(r); its gradient "
                    "reversed and scaled by lambda(e) = 0 -> 1 along a half cosine over epochs "
                    "1..10; trained by the student's SGD; not saved with the student")


@pytest.mark.parametrize("pair", PAIRS)
def test_ctkd_cards(pair):
  student = PAIRS[pair][1]
  card = _card(cifar_ctkd, pair)
  _check(card, lr=_lr(student), epochs=240, batch=64, loss="0.1 CE + 0.9 KD(T), " + CTKD.format(1, 21))
  assert card["temperature"] == CTKD_TEMPERATURE.format(1)
  card = _card(cifar_ctkd, f"dkd,{pair}")
  _check(card, lr=_lr(student), epochs=240, batch=64,
         loss=f"1 CE + 1 DKD(alpha=1, beta={DKD_BETA.get(pair, 8)}, T), " + CTKD.format(1, 21))
  card = _card(cifar_ls, f"ctkd,{pair}")
  ls = ", both sides' logits z-scored per sample (LS)"
  _check(card, lr=_lr(student), epochs=240, batch=64,
         loss="0.1 CE + 9 KD(T), " + CTKD.format(2, 22) + ls)
  assert card["temperature"] == CTKD_TEMPERATURE.format(2)
  assert ("logs/CTKD/ctkd," in card["follows"]) == (pair in KD_LS)


@pytest.mark.parametrize("pair", PAIRS)
def test_nd_cards(pair):
  teacher, student = PAIRS[pair]
  kd_w, nd_w = KD_ND.get(pair, (1.0, 2.0))
  alpha, beta, dkd_nd_w = DKD_ND.get(pair, (1.0, 8.0, 1.0))
  init = ("normal_0.01" if student.startswith("resnet") else "zero_bias"
          if student in ("wrn_40_1", "MobileNetV2", "ShuffleV1", "ShuffleV2") else None)
  for base, loss, lr in (
      ("kd_nd", f"1 CE + min(1, e/20) {kd_w:g} KD(T=4) + {nd_w:g} ND", 0.1),
      ("dkd_nd", f"1 CE + min(1, e/20) DKD(alpha={alpha:g}, beta={beta:g}, T=4) + {dkd_nd_w:g} ND",
       0.02 if pair == "res32x4_shuv1" else 0.1),
      ("cskd_nd", f"1 CE + 2 [CSKD(T=4) + CSKD(T_i)] + 1 ND, {CSWT}", 0.1)):
    card = _card(cifar_nd, f"{base},{pair}")
    _check(card, lr=lr, epochs=240, batch=128, loss=loss, optimizer=NESTEROV)
    assert card["student"].endswith("BatchNorm statistics per 64 samples")
    assert (f"classifier init {init}," in card["student"]) if init else (
        "classifier init" not in card["student"])
    dims = {"resnet56": 64, "resnet110": 64, "resnet32x4": 256, "wrn_40_2": 128, "vgg13": 512,
            "ResNet50": 2048}[teacher]
    if "head" in card:
      assert f"-> {dims}), init zero_bias" in card["head"]


HCL = "HCL(ABF(student stages + pooled), teacher pre-ReLU stages + pooled)"


@pytest.mark.parametrize("pair", PAIRS)
def test_dist_pp_and_reviewkd_pp_cards(pair):
  """The ND authors' recipe (as KD++'s) with DIST++ / ReviewKD++'s per-pair weights; pairs
  they did not publish: the defaults (1, 1)."""
  teacher, student = PAIRS[pair]
  kd, nd, lr = DIST_ND.get(pair, (1.0, 1.0, 0.1))
  review_kd, review_nd = REVIEWKD_ND.get(pair, (1.0, 1.0))
  for base, loss, lr, init in (
      ("dist_nd", f"1 CE + min(1, e/20) DIST(beta={kd:g}, gamma={kd:g}, T=4) + {nd:g} ND", lr,
       "normal_0.01" if student.startswith("resnet") else "zero_bias"
       if student in ("wrn_40_1", "MobileNetV2", "ShuffleV1", "ShuffleV2") else None),
      ("reviewkd_nd", f"1 CE + min(1, e/20) {review_kd:g} {HCL} + {review_nd:g} ND", 0.1,
       "normal_0.01_zero_bias" if student.startswith("resnet") else "zero_bias")):
    card = _card(cifar_nd, f"{base},{pair}")
    _check(card, lr=lr, epochs=240, batch=128, loss=loss, optimizer=NESTEROV)
    assert card["student"].endswith("BatchNorm statistics per 64 samples")
    assert (f"classifier init {init}," in card["student"]) if init else (
        "classifier init" not in card["student"])
    widths = models.pooled_dim(student), models.pooled_dim(teacher)
    assert ("head" in card) == (widths[0] != widths[1])
    if pair in PUBLISHED_ND:
      name, number = {"dist_nd": ("DIST++", 1), "reviewkd_nd": ("ReviewKD++", 2)}[base]
      assert card["published"] == f"{name} {PUBLISHED_ND[pair][number]:.2f} (ND authors' README)"
  if pair in PUBLISHED_ND:
    assert _card(cifar_dist, pair)["published"] == (
        f"DIST {PUBLISHED_ND[pair][0]:.2f} (ND authors' README)")


ND_ON_BASES = [name for name, cls in methods.METHODS.items() if not name.endswith("_nd")
               and name not in methods.ND_REFUSED and name != "deit"
               and cls.task == "classification"
               and f"{name}_nd" not in cifar_nd.BASES]


@pytest.mark.parametrize("base", ND_ON_BASES)
def test_nd_on_any_base_is_the_base_card_plus_nd(base):
  """Every pair: the base's own card, its loss + 1 ND (the weak view's for two views), the
  projection head where the pooled widths differ, and a source naming the addition."""
  module = importlib.import_module(f"configs.cifar_{base}")
  weak = " (weak view)" if methods.METHODS[base].num_views == 2 else ""
  for pair, (teacher, student) in PAIRS.items():
    card, base_card = _card(cifar_nd, f"{base}_nd,{pair}"), _card(module, pair)
    assert card["loss"].split(" (e: ")[0] == base_card["loss"].split(" (e: ")[0] + f" + 1 ND{weak}"
    assert card["follows"] == base_card["follows"] + "; + ND (METHODS.md 12, unpublished: nd_weight 1)"
    ds, dt = models.pooled_dim(student), models.pooled_dim(teacher)
    head = {"head": f"BatchNorm1d -> Dropout(0.5) -> Linear({ds} -> {dt}), init zero_bias; "
                    "feeds ND only, not saved with the student"} if ds != dt else {}
    rest = lambda c: {k: v for k, v in c.items() if k not in ("loss", "follows", "published")}
    assert rest(card) == rest(base_card) | head, pair
    assert "published" not in card


@pytest.mark.parametrize("model,lr", [("resnet56", 0.05), ("ShuffleV2", 0.01)])
def test_teacher_training_cards(model, lr):
  _check(_card(cifar_ce, model), lr=lr, epochs=240, batch=64, loss="CE")


@pytest.mark.parametrize("pair,kd_nd,dkd_nd,dkd_beta", [
    ("res34_res18", (2.5, 1.0), (0.8, 0.5, 1.0), 0.5),
    ("res50_mbv1", (4.0, 1.0), (0.8, 1.0, 1.0), 2.0)])
def test_imagenet_cards(pair, kd_nd, dkd_nd, dkd_beta):
  """METHODS.md 2, 3, 5, 6: batch 512, lr 0.2 x0.1 at 30/60/90, wd 1e-4, T = 1."""
  expected = {
      (imagenet_kd, pair): "0.5 CE + 0.5 KD(T=1)",
      (imagenet_dkd, pair): f"1 CE + min(1, (e+1)/1) DKD(alpha=1, beta={dkd_beta:g}, T=1)",
      (imagenet_nd, f"kd_nd,{pair}"): f"1 CE + min(1, e/5) {kd_nd[0]:g} KD(T=1) + 1 ND",
      (imagenet_nd, f"dkd_nd,{pair}"): (f"1 CE + min(1, e/5) DKD(alpha=0.8, beta={dkd_nd[1]:g}, "
                                        "T=1) + min(1, e/5) 1 ND"),
  }
  for (module, arg), loss in expected.items():
    card = _card(module, arg)
    nesterov = module is imagenet_nd
    assert card["lr"] == "0.2, x0.1 at epochs 30, 60, 90"
    assert card["schedule"].startswith(f"100 epochs x {1_281_167 // 512} steps of batch 512 ")
    assert card["optimizer"] == (f"SGD momentum 0.9{', Nesterov' if nesterov else ''}, "
                                 "weight decay 0.0001 on all parameters")
    assert card["loss"].split(" (e: ")[0] == loss
    if "head" in card:
      assert card["head"].startswith("BatchNorm1d -> Dropout(0.5) -> Linear(1024 -> 2048), "
                                     "init normal_0.01")
  # The authors' EmbTrans wraps (and its init loop re-draws the classifier of) the
  # MobileNetV1 student only: train_kd.py / train_dkd.py.
  for base in ("kd_nd", "dkd_nd"):
    init = imagenet_nd.get_config(f"{base},{pair}").student.classifier_init
    assert init == ("normal_0.01" if pair == "res50_mbv1" else "zoo")


@pytest.mark.parametrize("pair,weights,mid,published", [
    ("res34_res18", (1.0, 3.0), 512, (71.62, 71.64)),
    ("res50_mbv1", (8.0, 4.0), 256, (72.56, 72.96))])
def test_imagenet_reviewkd_cards(pair, weights, mid, published):
  """ReviewKD: mdistiller's imagenet yamls; ReviewKD++: ND ImageNet/ReviewKD++ (METHODS.md 12)."""
  hcl = HCL.replace("student stages", "student pre-ReLU stages")
  card = _card(imagenet_reviewkd, pair)
  assert card["loss"].split(" (e: ")[0] == f"1 CE + min(1, (e+1)/1) {weights[0]:g} {hcl}"
  assert card["lr"] == "0.1, x0.1 at epochs 30, 60, 90"
  assert card["schedule"].startswith(f"100 epochs x {1_281_167 // 256} steps of batch 256 ")
  assert card["optimizer"] == "SGD momentum 0.9, weight decay 0.0001 on all parameters"
  assert f"to {mid} channels" in card["connectors"]
  assert card["published"] == f"ReviewKD {published[0]:.2f} (ND authors' README (ReviewKD row))"
  card = _card(imagenet_nd, f"reviewkd_nd,{pair}")
  assert card["loss"].split(" (e: ")[0] == (f"1 CE + min(1, e/5) {weights[0]:g} {hcl} + "
                                            f"{weights[1]:g} ND")
  assert card["lr"] == "0.2, x0.1 at epochs 30, 60, 90"
  assert card["schedule"].startswith(f"100 epochs x {1_281_167 // 512} steps of batch 512 ")
  assert card["optimizer"] == "SGD momentum 0.9, Nesterov, weight decay 0.0001 on all parameters"
  assert f"to {mid} channels" in card["connectors"]
  assert "classifier init zero_bias," in card["student"]
  assert ("head" in card) == (pair == "res50_mbv1")
  if "head" in card:
    assert card["head"].startswith("BatchNorm1d -> Dropout(0.5) -> Linear(1024 -> 2048), "
                                   "init zero_bias")
  assert card["published"] == f"ReviewKD++ {published[1]:.2f} (ND authors' README)"


def test_published_number_and_source_on_the_card():
  assert _card(cifar_nd, "dkd_nd,res32x4_shuv2")["published"] == "DKD++ 77.49 (ND authors' README)"
  assert _card(cifar_ls, "dkd,wrn40_2_res8x4")["published"] == (
      "DKD+LS 76.75 (logit standardization README)")
  assert _card(cifar_dkd, "vgg13_mv2")["published"] == "DKD 69.71 (mdistiller README)"
  assert _card(cifar_ctkd, "vgg13_vgg8")["published"] == "CTKD 73.52 (logit standardization README)"
  assert _card(cifar_ls, "ctkd,wrn40_2_mv2")["published"] == (
      "CTKD+LS 69.53 (logit standardization README)")
  assert "published" not in _card(cifar_cskd, "res56_res20")
  assert _card(cifar_mlkd, "res32x4_res8x4")["published"] == "MLKD 77.08 (logit standardization README)"
  assert _card(cifar_ls, "mlkd,wrn40_2_mv2")["published"] == (
      "MLKD+LS 71.61 (logit standardization README)")
  assert "published" not in _card(cifar_mlkd, "res32x4_shuv1")  # not in the LS table


def test_recipe_command_prints_the_card_and_refuses_bad_input_in_one_line():
  run = lambda *args: subprocess.run([sys.executable, "-m", "kd_jax.tools.recipe", *args],
                                     capture_output=True, text=True, timeout=120)
  ok = run("--config=configs/cifar_nd.py:kd_nd,res56_res20", "--config.optim.lr=0.2")
  assert ok.returncode == 0, ok.stderr
  assert "lr            0.2, x0.1 at epochs 150, 180, 210" in ok.stdout
  bad = run("--config=configs/cifar_kd.py", "--config.method.name=nope")
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown method")
