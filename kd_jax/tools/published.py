"""Published top-1 accuracies (%) to compare kd_jax runs against (METHODS.md section 8).

Keys use kd_jax model names (kd_jax.models), so a run's config looks its numbers up
directly. Sources: the mdistiller and CRD READMEs (teachers, students, KD, DKD) and the
ND authors' README (KD++, DKD++). CIFAR entries are CIFAR-100; `imagenet_*` entries are
ImageNet-1k.
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
}

# (method, teacher, student) -> top-1; a pair's blank cells in METHODS.md are absent.
DISTILLED = {}
_TABLE = (  # teacher, student, KD, DKD, KD++, DKD++
    ("resnet56", "resnet20", 70.66, 71.97, 72.53, 72.16),
    ("resnet110", "resnet32", 73.08, 74.11, None, None),
    ("resnet32x4", "resnet8x4", 73.33, 76.32, 75.54, 76.28),
    ("wrn_40_2", "wrn_16_2", 74.92, 76.24, None, None),
    ("wrn_40_2", "wrn_40_1", 73.54, 74.81, 74.59, 75.02),
    ("vgg13", "vgg8", 72.98, 74.68, None, None),
    ("resnet32x4", "ShuffleV1", 74.07, 76.45, 75.45, 77.11),
    ("resnet32x4", "ShuffleV2", 74.45, 77.07, 76.42, 77.49),
    ("ResNet50", "MobileNetV2", 67.35, 70.35, 70.10, 70.82),
    ("imagenet_resnet34", "imagenet_resnet18", 71.03, 71.70, 71.98, 72.07),
    ("imagenet_resnet50", "imagenet_mobilenetv1", 70.50, 72.05, 72.77, 72.63),
)
METHODS = ("KD", "DKD", "KD++", "DKD++")
for _teacher, _student, *_numbers in _TABLE:
  for _method, _number in zip(METHODS, _numbers):
    if _number is not None:
      DISTILLED[(_method, _teacher, _student)] = _number

# Rows of the table in METHODS.md order, for sorting result tables the same way.
PAIR_ORDER = tuple((teacher, student) for teacher, student, *_ in _TABLE)


def dataset_of(model):
  """The dataset the published numbers for `model` refer to."""
  return "imagenet" if model.startswith("imagenet_") else "cifar100"


def published_method(method_config):
  """The published method a run's `config.method` reproduces ('KD', 'DKD++'...), or None.

  KD/DKD with an ND term (a nonzero `nd*` weight, or a name like 'kd++' / 'kd_nd') map to
  the '++' variants; logit standardization or any other method has no published number.
  """
  name = str(method_config.get("name", "")).lower()
  if method_config.get("standardize"):
    return None
  with_nd = "++" in name or name.endswith("_nd") or name.endswith("pp")
  with_nd = with_nd or any(key.startswith("nd") and value not in (0, 0.0, False, None)
                           for key, value in method_config.items() if key != "name")
  base = name.replace("++", "")
  for suffix in ("_nd", "pp"):
    base = base[:-len(suffix)] if base.endswith(suffix) else base
  if base not in ("kd", "dkd"):
    return None
  return base.upper() + ("++" if with_nd else "")


def lookup(method, teacher, student):
  """Published top-1 of `method` ('KD', 'DKD', 'KD++', 'DKD++') on teacher→student, or None."""
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
