"""Published top-1 accuracies (%) to compare kd_jax runs against (METHODS.md section 8).

Keys use kd_jax model names (kd_jax.models), so a run's config looks its numbers up
directly. Sources: the mdistiller and CRD READMEs (teachers, students, KD, DKD), the ND
authors' README (KD++, DKD++, DIST, DIST++, ReviewKD++), the logit standardization README (+LS, CTKD, MLKD, and
KD/DKD on its extra pairs), the CRD README (feature baselines, VID and CRD,
METHODS.md 9), the ReviewKD row of the ND authors' README, and the ND README's
transformer tables (ViT -> ResNet-18, RegNetY-16GF -> DeiT-B); `SOURCES` names the one of
each number. CIFAR entries are CIFAR-100; `imagenet_*` entries
are ImageNet-1k.
"""

# Teachers as published with the benchmarks' checkpoints.
TEACHERS = {
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "wrn_40_2": 75.61,
    "vgg13": 74.64,
    "ResNet50": 79.34,
    "imagenet_resnet34": 73.31,
    "imagenet_resnet50": 76.16,
    # ND README, "Distillation between CNN and Transformer": the teacher columns (timm
    # weights evaluated through the ND code's ImageNet-normalised pipeline).
    "vit_small_patch16_224": 74.64,
    "vit_base_patch16_224": 78.00,
    "regnety_160": 82.9,
}

# Students trained alone with cross-entropy (CIFAR-100).
STUDENTS = {
    "resnet20": 69.06,
    "resnet32": 71.14,
    "resnet8x4": 72.50,
    "wrn_16_2": 73.26,
    "wrn_40_1": 71.98,
    "vgg8": 70.36,
    "MobileNetV2": 64.60,
    "ShuffleV1": 70.50,
    "ShuffleV2": 71.82,
    # ImageNet-1k (ND README): ResNet-18 (torchvision) and DeiT-B without distillation.
    "imagenet_resnet18": 69.76,
    "deit_base_patch16_224": 81.8,
}

# COCO 2017 val box AP of the detection teachers (METHODS.md 13): detectron2's
# MODEL_ZOO.md, COCO-Detection faster_rcnn_R_{101,50}_FPN_3x (137851257, 137849458), the
# weights the ND configs distill from. The distilled students' COCO numbers (ND, DKD and
# ReviewKD papers' tables) could not be read from any source fetched for kd_jax, so none
# are listed.
DETECTION_TEACHERS_AP = {"faster_rcnn_R101_FPN": 42.0, "faster_rcnn_R50_FPN": 40.2}
DETECTION_SOURCE = "detectron2 MODEL_ZOO.md, COCO-Detection Faster R-CNN R*-FPN 3x box AP"

# (method, teacher, student) -> top-1; blank cells are absent.
DISTILLED = {}
# Each table: ({method: source}, rows of (teacher, student, *numbers in method order)).
_MDISTILLER, _ND = "mdistiller README", "ND authors' README"
_LS = "logit standardization README"
_CRD = "CRD README (RepDistiller), CIFAR-100 tables 1-2"
_ND_REVIEWKD = "ND authors' README (ReviewKD row)"
_ND_VIT = "ND authors' README, 1.2 ViT -> ResNet"
_ND_DEIT = "ND authors' README, 1.2 CNN -> ViT (DeiT: distillation token, RegNetY-16GF)"
_DEIT_OWN = ("DeiT paper's DeiT-B distilled, trained by DeiT's own recipe, not kd_jax's "
             "imagenet_deit.py one; quoted in the ND authors' README 1.2")
_TABLES = (
    ({"KD": _MDISTILLER, "DKD": _MDISTILLER, "KD++": _ND, "DKD++": _ND}, (
         ("resnet56", "resnet20", 70.66, 71.97, 72.53, 72.16),
         ("resnet110", "resnet32", 73.08, 74.11, None, None),
         ("resnet32x4", "resnet8x4", 73.33, 76.32, 75.54, 76.28),
         ("wrn_40_2", "wrn_16_2", 74.92, 76.23, None, None),
         ("wrn_40_2", "wrn_40_1", 73.54, 74.81, 74.59, 75.02),
         ("vgg13", "vgg8", 72.98, 74.68, None, None),
         ("resnet32x4", "ShuffleV1", 74.07, 76.45, 75.45, 77.11),
         ("wrn_40_2", "ShuffleV1", 74.83, 76.70, None, None),
         ("vgg13", "MobileNetV2", 67.37, 69.71, None, None),
         ("ResNet50", "MobileNetV2", 67.35, 70.35, 70.10, 70.82),
         ("resnet32x4", "ShuffleV2", 74.45, 77.07, 76.42, 77.49),
         ("imagenet_resnet34", "imagenet_resnet18", 71.03, 71.70, 71.98, 72.07),
         ("imagenet_resnet50", "imagenet_mobilenetv1", 70.50, 72.05, 72.77, 72.63),
     )),
    # KD/DKD only on the pairs mdistiller lacks; '+LS' is the README's 'Ours'.
    (dict.fromkeys(("KD", "DKD", "KD+LS", "DKD+LS", "CTKD", "CTKD+LS", "MLKD", "MLKD+LS"),
                   _LS), (
         ("resnet32x4", "resnet8x4", None, None, 76.62, 77.01, 73.39, 76.67, 77.08, 78.28),
         ("vgg13", "vgg8", None, None, 74.36, 74.81, 73.52, 74.47, 75.18, 75.22),
         ("wrn_40_2", "wrn_40_1", None, None, 74.37, 74.89, 73.93, 74.58, 75.35, 75.56),
         ("wrn_40_2", "wrn_16_2", None, None, 76.11, 76.39, 75.45, 76.08, 76.63, 76.95),
         ("resnet56", "resnet20", None, None, 71.43, 72.32, 71.19, 71.34, 72.19, 72.33),
         ("resnet110", "resnet32", None, None, 74.17, 74.29, 73.52, 74.01, 74.11, 74.32),
         ("resnet110", "resnet20", 70.67, 71.06, 71.48, 71.85, 70.99, 71.39, 71.89, 72.27),
         ("resnet32x4", "ShuffleV2", None, None, 75.56, 77.37, 75.37, 76.18, 78.44, 78.76),
         ("resnet32x4", "wrn_16_2", 74.90, 75.70, 75.26, 76.19, 74.57, 75.16, 76.52, 77.53),
         ("resnet32x4", "wrn_40_2", 77.70, 78.46, 77.92, 78.95, 77.66, 77.99, 79.26, 79.66),
         ("wrn_40_2", "resnet8x4", 73.97, 75.56, 77.11, 76.75, 74.61, 77.03, 77.33, 77.68),
         ("wrn_40_2", "MobileNetV2", 68.36, 69.28, 69.23, 70.01, 68.34, 69.53, 70.78, 71.61),
         ("vgg13", "MobileNetV2", None, None, 68.61, 69.98, 68.50, 68.98, 70.57, 70.94),
         ("ResNet50", "MobileNetV2", None, None, 69.02, 70.45, 68.67, 69.36, 71.04, 71.19),
     )),
    # Feature baselines as RepDistiller ran them; its ResNet50 -> vgg8 column is left out
    # (no kd_jax pair).
    (dict.fromkeys(("FitNet", "AT", "SP", "RKD", "PKT", "NST"), _CRD), (
         ("wrn_40_2", "wrn_16_2", 73.58, 74.08, 73.83, 73.35, 74.54, 73.68),
         ("wrn_40_2", "wrn_40_1", 72.24, 72.77, 72.43, 72.22, 73.45, 72.24),
         ("resnet56", "resnet20", 69.21, 70.55, 69.67, 69.61, 70.34, 69.60),
         ("resnet110", "resnet20", 68.99, 70.22, 70.04, 69.25, 70.25, 69.53),
         ("resnet110", "resnet32", 71.06, 72.31, 72.69, 71.82, 72.61, 71.96),
         ("resnet32x4", "resnet8x4", 73.50, 73.44, 72.94, 71.90, 73.64, 73.30),
         ("vgg13", "vgg8", 71.02, 71.43, 72.68, 71.48, 72.88, 71.53),
         ("vgg13", "MobileNetV2", 64.14, 59.40, 66.30, 64.52, 67.13, 58.16),
         ("ResNet50", "MobileNetV2", 63.16, 58.58, 68.08, 64.43, 66.52, 64.96),
         ("resnet32x4", "ShuffleV1", 73.59, 71.73, 73.48, 72.28, 74.10, 74.12),
         ("resnet32x4", "ShuffleV2", 73.54, 72.73, 74.56, 73.21, 74.69, 74.68),
         ("wrn_40_2", "ShuffleV1", 73.73, 73.32, 74.52, 72.21, 73.89, 74.89),
     )),
    # CRD alone (CE + 0.8 CRD, no KD term), both tables of the RepDistiller README.
    ({"CRD": _CRD}, (
         ("wrn_40_2", "wrn_16_2", 75.48), ("wrn_40_2", "wrn_40_1", 74.14),
         ("resnet56", "resnet20", 71.16), ("resnet110", "resnet20", 71.46),
         ("resnet110", "resnet32", 73.48), ("resnet32x4", "resnet8x4", 75.51),
         ("vgg13", "vgg8", 73.94), ("vgg13", "MobileNetV2", 69.73),
         ("ResNet50", "MobileNetV2", 69.11), ("ResNet50", "vgg8", 74.30),
         ("resnet32x4", "ShuffleV1", 75.11), ("resnet32x4", "ShuffleV2", 75.65),
         ("wrn_40_2", "ShuffleV1", 76.05),
     )),
    # The ReviewKD row of the ND authors' README tables (CIFAR-100 1.1, ImageNet 1.2).
    ({"ReviewKD": _ND_REVIEWKD}, (
         ("resnet56", "resnet20", 71.89),
         ("wrn_40_2", "wrn_40_1", 75.09),
         ("resnet32x4", "resnet8x4", 75.63),
         ("ResNet50", "MobileNetV2", 69.89),
         ("resnet32x4", "ShuffleV1", 77.45),
         ("resnet32x4", "ShuffleV2", 77.78),
         ("imagenet_resnet34", "imagenet_resnet18", 71.62),
         ("imagenet_resnet50", "imagenet_mobilenetv1", 72.56),
     )),
    # DIST and the ND authors' DIST++ / ReviewKD++ rows (CIFAR-100 1.1, ImageNet 1.2).
    ({"DIST": _ND, "DIST++": _ND, "ReviewKD++": _ND}, (
         ("resnet56", "resnet20", 71.78, 72.52, 72.05),
         ("wrn_40_2", "wrn_40_1", 74.42, 75.00, 75.66),
         ("resnet32x4", "resnet8x4", 75.79, 76.13, 76.07),
         ("ResNet50", "MobileNetV2", 69.17, 69.80, 70.45),
         ("resnet32x4", "ShuffleV1", 75.23, 75.60, 77.68),
         ("resnet32x4", "ShuffleV2", 76.08, 76.64, 77.93),
         ("imagenet_resnet34", "imagenet_resnet18", None, None, 71.64),
         ("imagenet_resnet50", "imagenet_mobilenetv1", None, None, 72.96),
     )),
    # RepDistiller README, tables 1 (same architecture) and 2 (different architecture).
    ({"VID": _CRD}, (
         ("wrn_40_2", "wrn_16_2", 74.11),
         ("wrn_40_2", "wrn_40_1", 73.30),
         ("resnet56", "resnet20", 70.38),
         ("resnet110", "resnet20", 70.16),
         ("resnet110", "resnet32", 72.61),
         ("resnet32x4", "resnet8x4", 73.09),
         ("vgg13", "vgg8", 71.23),
         ("vgg13", "MobileNetV2", 65.56),
         ("ResNet50", "MobileNetV2", 67.57),
         ("ResNet50", "vgg8", 70.30),
         ("resnet32x4", "ShuffleV1", 73.38),
         ("resnet32x4", "ShuffleV2", 73.40),
         ("wrn_40_2", "ShuffleV1", 73.61),
     )),
    # Transformers in the ND README (METHODS.md 11), ImageNet-1k.
    (dict.fromkeys(("KD", "DKD", "KD++", "DKD++"), _ND_VIT), (
         ("vit_small_patch16_224", "imagenet_resnet18", 71.32, 71.21, 71.46, 71.33),
         ("vit_base_patch16_224", "imagenet_resnet18", 71.63, 71.62, 71.84, 71.69),
     )),
    ({"DeiT": _DEIT_OWN, "DeiT++": _ND_DEIT}, (
         ("regnety_160", "deit_base_distilled_patch16_224", 83.4, 83.6),
     )),
)
# config.method.name -> the published name of a method without variants (METHODS.md 9).
NAMED = {"fitnet": "FitNet", "at": "AT", "nst": "NST", "sp": "SP", "pkt": "PKT", "rkd": "RKD",
         "reviewkd": "ReviewKD", "vid": "VID", "kdsvd": "KDSVD", "ofd": "OFD"}
SOURCES = {}  # (method, teacher, student) -> where the number was published
for _sources, _rows in _TABLES:
  for _teacher, _student, *_numbers in _rows:
    for _method, _number in zip(_sources, _numbers):
      if _number is not None:
        DISTILLED[(_method, _teacher, _student)] = _number
        SOURCES[(_method, _teacher, _student)] = _sources[_method]

# Rows in table order (the benchmark's pairs, then the LS-only ones), for sorting.
PAIR_ORDER = tuple(dict.fromkeys((t, s) for _, rows in _TABLES for t, s, *_ in rows))


# ImageNet model names: the zoo's CNNs, and the timm-named transformers and RegNets.
IMAGENET_PREFIXES = ("imagenet_", "vit_", "deit_", "regnet")


def dataset_of(model):
  """The dataset the published numbers for `model` refer to."""
  if model.startswith("faster_rcnn_"):
    return "coco"
  return "imagenet" if model.startswith(IMAGENET_PREFIXES) else "cifar100"


def teacher(model, dataset):
  """The published number of teacher `model` on `dataset` (top-1, COCO box AP for a
  detector), or None."""
  if not dataset.startswith(dataset_of(model)):
    return None
  return DETECTION_TEACHERS_AP.get(model) if dataset == "coco" else TEACHERS.get(model)


def published_method(method_config):
  """The published method a run's `config.method` reproduces ('KD', 'DKD++'...), or None.

  KD/DKD/DeiT/DIST/ReviewKD with an ND term (a nonzero `nd*` weight, or a name like 'kd++' / 'kd_nd') map to
  the '++' variants, with logit standardization to '+LS'; MLKD to 'MLKD' or 'MLKD+LS';
  methods of NAMED map to their published name, CRD to 'CRD' (or 'CRD+KD' with a KD
  term), CTKD on KD with the global temperature to 'CTKD' / 'CTKD+LS' (DKD+CTKD and the
  instance-wise temperature have no published CIFAR number here); any other method has
  none. The detection methods ('det_kd_nd'...) are named as their papers' COCO tables
  name them ('KD++', 'ReviewKD++', 'DKD', 'ReviewKD').
  """
  name = str(method_config.get("name", "")).lower().removeprefix("det_")
  if name in NAMED:
    return NAMED[name]
  if name == "crd":  # the README's CRD has no KD term; CRD+KD (kd_weight > 0) is unlisted
    return "CRD+KD" if method_config.get("kd_weight") else "CRD"
  if name == "ctkd":  # the LS README's CTKD columns: KD base, global temperature
    kd_base = not method_config.get("dkd_weight") and method_config.get("kd_weight")
    if not kd_base or method_config.get("temperature_module", "global") != "global":
      return None
    return "CTKD+LS" if method_config.get("standardize") else "CTKD"
  if method_config.get("standardize"):
    return {"kd": "KD+LS", "dkd": "DKD+LS", "mlkd": "MLKD+LS"}.get(name)
  if name == "mlkd":
    return "MLKD"
  with_nd = "++" in name or name.endswith("_nd") or name.endswith("pp")
  with_nd = with_nd or any(key.startswith("nd") and value not in (0, 0.0, False, None)
                           for key, value in method_config.items() if key != "name")
  base = name.replace("++", "")
  for suffix in ("_nd", "pp"):
    base = base[:-len(suffix)] if base.endswith(suffix) else base
  base = {"kd": "KD", "dkd": "DKD", "deit": "DeiT", "dist": "DIST",
          "reviewkd": "ReviewKD"}.get(base)
  return base and base + ("++" if with_nd else "")


def lookup(method, teacher, student):
  """Published top-1 of `method` ('KD', 'DKD+LS', 'KD++'...) on teacher→student, or None."""
  return DISTILLED.get((method, teacher, student))


def alone(model):
  """Published top-1 of `model` trained alone (teacher or student table), or None."""
  return TEACHERS.get(model, STUDENTS.get(model))


def for_config(config):
  """The published number a run with this resolved config (a dict) compares to, or None.

  Distillation runs look up (method, teacher, student); cross-entropy runs ('ce') the
  model alone. None when the dataset is not the one the number was measured on.
  """
  student, dataset = config["student"]["model"], config["data"]["dataset"]
  if not dataset.startswith(dataset_of(student)):  # 'imagenet2012' is TFDS's ImageNet
    return None
  if config["method"].get("name") == "ce":
    return alone(student)
  method = published_method(config["method"])
  return method and lookup(method, config["teacher"]["model"], student)
