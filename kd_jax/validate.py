"""Every value of a run's config checked before anything is loaded, compiled or written.

The recipe's constraints are declared here, one rule per field; the method's come from its
dataclass (kd_jax.methods.base: non_negative / positive / one_of). Each mistake is one
UserError line naming the field (main.py: `error: ...`, exit status 2).
"""
import dataclasses
import math
import os

import jax
import ml_collections

from kd_jax import data, methods, models
from kd_jax import step as step_lib
from kd_jax.data import batch_augment, feeders, imagenet
from kd_jax.errors import UserError

DTYPES = ("float32", "bfloat16")
DATASETS = tuple(feeders.DATASETS)


def _positive(value):
  return value > 0


def _non_negative(value):
  return value >= 0


# field -> (test, what it must be); fields a config lacks are skipped.
RULES = {
    "seed": (_non_negative, ">= 0"),
    "num_epochs": (_positive, "> 0"),
    "batch_size": (_positive, "> 0"),
    "eval_batch_size": (_positive, "> 0"),
    "log_every_steps": (_positive, "> 0"),
    "checkpoint_keep": (lambda v: v >= 2, ">= 2 (an older checkpoint to resume from when the "
                        "newest is damaged)"),
    "optim.lr": (_positive, "> 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (_non_negative, ">= 0"),
    "optim.decay_factor": (_positive, "> 0"),
    "optim.name": (step_lib.OPTIMIZERS.__contains__, f"one of {', '.join(step_lib.OPTIMIZERS)}"),
    "optim.schedule": (step_lib.SCHEDULES.__contains__, f"one of {', '.join(step_lib.SCHEDULES)}"),
    "optim.b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.eps": (_positive, "> 0"),
    "optim.warmup_epochs": (_non_negative, ">= 0"),
    "optim.min_lr": (_non_negative, ">= 0"),
    "optim.warmup_steps": (_non_negative, ">= 0"),
    "optim.warmup_factor": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.dataset": (DATASETS.__contains__, f"one of {', '.join(DATASETS)}"),
    "data.synthetic_train_size": (_non_negative, ">= 0"),
    "data.synthetic_test_size": (_non_negative, ">= 0"),
    "data.image_size": (_positive, "> 0"),
    "data.period": (_positive, "> 0 (iterations between evaluations and checkpoints)"),
    "data.max_boxes": (_positive, "> 0"),
    "data.short_edges": (lambda v: len(v) > 0 and all(e > 0 for e in v), "non-empty, each > 0"),
    "data.max_size": (_positive, "> 0"),
    "data.test_short_edge": (_positive, "> 0"),
    "data.test_max_size": (_positive, "> 0"),
    "eval_every_epochs": (_positive, "> 0"),
    "data.num_threads": (_non_negative, ">= 0 (0: one per usable core)"),
    "data.worker_count": (lambda v: v >= -1, ">= -1 (-1: chosen from the host)"),
    "data.interpolation": (tuple(imagenet.INTERPOLATIONS).__contains__,
                           f"one of {', '.join(imagenet.INTERPOLATIONS)}"),
    "data.bad_images": (imagenet.BAD_IMAGES.__contains__,
                        f"one of {', '.join(imagenet.BAD_IMAGES)}"),
    "student.classifier_init": (models.CLASSIFIER_INITS.__contains__,
                                f"one of {', '.join(models.CLASSIFIER_INITS)}"),
    "student.bn_group_size": (_non_negative, ">= 0 (0: the whole batch)"),
    "student.drop_path_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "augment.mixup": (_non_negative, ">= 0 (0: off)"),
    "augment.cutmix": (_non_negative, ">= 0 (0: off)"),
    "augment.mix_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "augment.switch_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "augment.erase_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "augment.smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "augment.mix_group_size": (_non_negative, ">= 0 (0: the whole batch)"),
    "student.dtype": (DTYPES.__contains__, f"one of {', '.join(DTYPES)}"),
    "teacher.dtype": (DTYPES.__contains__, f"one of {', '.join(DTYPES)}"),
    "teacher.train_epochs": (_non_negative, ">= 0"),
    "teacher.input_norm": (models.INPUT_NORMS.__contains__,
                           f"one of {', '.join(models.INPUT_NORMS)}"),
}


def _get(config, field):
  for part in field.split("."):
    if part not in config:
      return None
    config = config[part]
  return config


def _nones(config, prefix="config."):
  """Fields set to None (ml_collections lets any field be None): no kd_jax field may be."""
  for key, value in config.items():
    if value is None:
      yield prefix + key
    elif hasattr(value, "items"):
      yield from _nones(value, f"{prefix}{key}.")


def check(config):
  """Raises a one-line UserError for the first bad value; returns the built method."""
  for field in _nones(config):
    raise UserError(f"{field}=None: give it a value")
  for field, (test, must_be) in RULES.items():
    value = _get(config, field)
    if value is None:
      continue
    if isinstance(value, float) and not math.isfinite(value) or not test(value):
      raise UserError(f"config.{field}={value!r} must be {must_be}")
  if "train_augment" in config.data:
    try:
      imagenet.rand_augment(config.data.train_augment)
    except UserError as error:
      raise UserError(f"config.data.train_augment={config.data.train_augment!r}: "
                      f"{error}") from None
  if config.data.dataset in data.DATASETS and config.data.source not in data.SOURCES:
    raise UserError(f"config.data.source={config.data.source!r} must be one of "
                    f"{', '.join(data.SOURCES)}")
  _check_runtime(config)
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % devices:
      raise UserError(f"config.{field}={config[field]} must be a multiple of the device "
                      f"count ({devices})")
  group = config.student.bn_group_size
  if group and config.batch_size % group:
    raise UserError(f"config.batch_size={config.batch_size} must be a multiple of "
                    f"config.student.bn_group_size={group}")
  decay = list(config.optim.decay_epochs)
  if decay != sorted(set(decay)) or any(not 0 < e <= config.num_epochs for e in decay):
    raise UserError(f"config.optim.decay_epochs={tuple(decay)} must be increasing epochs in "
                    f"1..num_epochs ({config.num_epochs})")
  steps = list(config.optim.decay_steps)
  if steps != sorted(set(steps)) or any(not 0 < step for step in steps):
    raise UserError(f"config.optim.decay_steps={tuple(steps)} must be increasing iterations "
                    "> 0")
  optim = config.optim
  if optim.schedule == "warmup_cosine" and not (
      optim.warmup_epochs < config.num_epochs and optim.min_lr <= optim.lr):
    raise UserError(f"config.optim.warmup_epochs={optim.warmup_epochs} must be < num_epochs "
                    f"({config.num_epochs}) and config.optim.min_lr={optim.min_lr} <= "
                    f"config.optim.lr={optim.lr}")
  models.pooled_dim(config.student.model)  # an unknown name: UserError listing the valid ones
  if config.student.drop_path_rate and not models.has_drop_path(config.student.model):
    raise UserError(f"config.student.drop_path_rate={config.student.drop_path_rate} needs a "
                    f"student with stochastic depth (a transformer); "
                    f"{config.student.model} has none")
  method = methods.create(config.method)
  task = feeders.DATASETS[config.data.dataset][1].task
  if method.task != task:
    raise UserError(f"method {config.method.name!r} trains {method.task}; "
                    f"config.data.dataset={config.data.dataset!r} is a {task} dataset")
  batch_augment.BatchAugment.from_config(config).check(config.batch_size, method)
  if method.needs_distillation_token and not models.has_distillation_token(config.student.model):
    raise UserError(f"method {config.method.name!r} trains a distillation token: the student "
                    f"must be a distilled DeiT (deit_*_distilled_*), not {config.student.model}")
  if method.needs_feature_maps:
    for role in ("student", "teacher"):
      if not models.has_feature_maps(config[role].model):
        raise UserError(f"method {config.method.name!r} distils feature maps, and the {role} "
                        f"{config[role].model} (a transformer) has none: use a CNN {role}, "
                        "or a logit or embedding method (kd, dkd, nd, pkt, rkd, crd ...)")
  if method.num_views > 1 and feeders.DATASETS[config.data.dataset][1] is feeders.HostFeeder:
    raise UserError(f"method {config.method.name!r} makes {method.num_views} views of each image "
                    f"on the device; {config.data.dataset} is augmented on the host")
  weights = config.student.get("options", {}).get("weights")
  if weights and not os.path.exists(weights):
    raise UserError(f"detector weights not found: {weights} (config.student.options.weights, "
                    f"detectron2's MODEL.WEIGHTS){fetch_hint(weights)}, or set it to '' to "
                    "train from scratch")
  if method.needs_teacher:
    models.pooled_dim(config.teacher.model)
    _check_teacher(config.teacher)
    if not config.teacher.checkpoint:
      check(teacher_bootstrap_config(config))
  return method


def _check_runtime(config):
  """config.compile_cache_dir (a directory, "auto" or "off") and config.profile_steps."""
  if not isinstance(config.compile_cache_dir, str) or not config.compile_cache_dir:
    raise UserError(f"config.compile_cache_dir={config.compile_cache_dir!r} must be a "
                    "directory, 'auto' or 'off'")
  steps = tuple(config.profile_steps)
  if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps)
                    and 1 <= steps[0] <= steps[1]):
    raise UserError(f"config.profile_steps={steps!r} must be N,M with 1 <= N <= M (the "
                    "steps to trace), or () for none")


def teacher_bootstrap_config(config):
  """The run that trains a missing teacher first (smoke runs): the student's recipe with
  plain CE (a detector: its own losses, with the teacher's options) on
  config.teacher.model for teacher.train_epochs, its decay epochs cut there."""
  teacher = ml_collections.ConfigDict(config.to_dict())
  detection = methods.METHODS[config.method.name].task == "detection"
  teacher.method = ml_collections.ConfigDict(methods.defaults(
      "detector" if detection else methods.TEACHER_TRAINING))
  teacher.student.model = config.teacher.model
  if "options" in config.teacher:  # a detector's settings (its input normalisation)
    teacher.student.options = ml_collections.ConfigDict(config.teacher.options.to_dict())
  teacher.num_epochs, teacher.teacher.train_epochs = config.teacher.train_epochs, 0
  teacher.optim.decay_epochs = tuple(e for e in config.optim.decay_epochs
                                     if e <= config.teacher.train_epochs)
  # The warm-up's share of the shorter run.
  teacher.optim.warmup_epochs = (config.optim.warmup_epochs * config.teacher.train_epochs
                                 / config.num_epochs)
  # Plain CE takes int labels, and the teacher model has no stochastic depth to set.
  teacher.augment = ml_collections.ConfigDict(dataclasses.asdict(batch_augment.BatchAugment()))
  teacher.student.drop_path_rate = 0.0
  return teacher


def fetch_hint(path):
  """The command that fetches the published teacher at `path`, if it is one."""
  for dataset, folder in (("cifar100", "cifar_teachers"), ("imagenet", "imagenet_teachers"),
                          ("coco", "detection/")):
    if folder in path:
      return f"; `python -m kd_jax.tools.fetch_teachers {dataset}` downloads it"
  return ""


def _check_teacher(teacher):
  if teacher.checkpoint:
    if not os.path.exists(teacher.checkpoint):
      raise UserError(f"teacher checkpoint not found: {teacher.checkpoint} "
                      f"(config.teacher.checkpoint){fetch_hint(teacher.checkpoint)}")
  elif teacher.train_epochs <= 0:
    raise UserError("this method needs a teacher: set config.teacher.checkpoint (a .pth "
                    "file, a teacher directory or a kd_jax run) or config.teacher.train_epochs > 0")
