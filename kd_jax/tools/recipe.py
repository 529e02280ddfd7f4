"""The recipe card of a config: everything a run will do, resolved, in one screen.

  python -m kd_jax.tools.recipe --config=configs/cifar_nd.py:kd_nd,res56_res20 \\
      [--config.optim.lr=0.05 ...]

Prints models, data, augmentation, epochs, batch, optimizer and schedule, the loss with
every weight, temperature and warm-up, whose recipe it follows, and the published number
it compares with. Nothing is loaded or compiled; overrides work as with main.py.
"""
import sys

from absl import app
from ml_collections import config_flags

from kd_jax import methods, models
from kd_jax.data import batch_augment, feeders, imagenet
from kd_jax.errors import UserError
from kd_jax.tools import published

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")

# Training-split sizes of the real datasets (synthetic sources use the config's size).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 1_281_167}


def steps_per_epoch(config):
  """Full batches per epoch: the last partial batch is dropped, as the trainer does (a
  detection run's "epoch" is config.data.period iterations)."""
  if "period" in config.data:
    return config.data.period
  size = (config.data.synthetic_train_size if config.data.source == "synthetic"
          else TRAIN_SIZES[config.data.dataset])
  return size // config.batch_size


def host_augmentation(data):
  """The host pipeline's train transform and eval resize, in words."""
  interpolation = data.get("interpolation", "bilinear")
  text = f"random resized crop {data.image_size} ({interpolation}) + horizontal flip"
  augment = data.get("train_augment", "crop_flip")
  if augment != "crop_flip":
    text += f" + timm RandAugment {augment!r}"
  resize = int(round(data.image_size / imagenet.EVAL_CROP_FRACTION))
  return (f"{text} (host pipeline); eval resize {resize} ({interpolation}) + center crop "
          f"{data.image_size}")


def card(config):
  """The recipe as (label, text) pairs, in reading order."""
  method = methods.create(config.method)
  student, teacher = config.student, config.teacher
  student_line = (f"{student.model} ({models.pooled_dim(student.model)}-d features; "
                  f"{_compute(student.dtype)})")
  if student.classifier_init != "zoo":
    student_line += f", classifier init {student.classifier_init}"
  student_line += (f", BatchNorm statistics per {student.bn_group_size} samples"
                   if student.bn_group_size else ", BatchNorm over the whole batch")
  lines = [("follows", config.source), ("student", student_line)]
  if method.needs_teacher:
    where = teacher.checkpoint or (f"trained first for {teacher.train_epochs} epochs"
                                   if teacher.train_epochs else "no checkpoint set")
    mode = ("BatchNorm on batch statistics" if method.teacher_batch_statistics
            else "eval mode")
    lines.append(("teacher", f"{teacher.model} ({where}; {_compute(teacher.dtype)}, frozen, "
                             f"{mode})"))
    widths = models.pooled_dim(student.model), models.pooled_dim(teacher.model)
    lines += method.describe_extras(*widths).items()
  data = config.data
  lines.append(("data", f"{data.dataset} (source {data.source})"))
  if feeders.DATASETS[data.dataset][1] is feeders.HostFeeder:
    lines.append(("augmentation", host_augmentation(data)))
  else:
    lines.append(("augmentation", method.describe_views()))
  on_device = batch_augment.BatchAugment.from_config(config).describe()
  if on_device:
    lines[-1] = ("augmentation", f"{lines[-1][1]}; {on_device}")
  optim, formula = config.optim, method.formula()
  lines += [
      ("schedule", _schedule_line(config)),
      ("optimizer", _optimizer_line(optim)),
      ("lr", _lr_line(optim, config.batch_size)),
      ("loss", formula + (" (e: epoch counted from 0)" if "e/" in formula or "(e+1)" in formula
                          else "")),
  ]
  name = published.published_method(config.method)
  number = published.for_config(config.to_dict())
  if number is not None:
    key = (name, teacher.model, student.model)
    lines.append(("published", f"{name or 'trained alone'} {number:.2f} "
                               f"({published.SOURCES.get(key, 'mdistiller/CRD README')})"))
  return lines


def _schedule_line(config):
  if "period" in config.data:  # detection: iterations
    return (f"{config.num_epochs * config.data.period} iterations of batch {config.batch_size} "
            f"(a checkpoint every {config.data.period}, COCO AP every "
            f"{config.eval_every_epochs * config.data.period} and at the end); eval batch "
            f"{config.eval_batch_size}")
  return (f"{config.num_epochs} epochs x {steps_per_epoch(config)} steps of batch "
          f"{config.batch_size} (last partial batch dropped); eval batch "
          f"{config.eval_batch_size}")


def _compute(dtype):
  """The precision policy of a model in words (kd_jax.models.layers)."""
  if dtype == "bfloat16":
    return "bfloat16 compute, float32 parameters and normalisation"
  return "float32"


def _optimizer_line(optim):
  decayed = ("all parameters" if optim["decay_1d"] else
             "matrices (not biases or other 1-D parameters)")
  if optim["name"] == "adamw":
    name = f"AdamW betas ({optim['b1']:g}, {optim['b2']:g}), eps {optim['eps']:g}"
  else:
    name = f"SGD momentum {optim['momentum']:g}{', Nesterov' if optim['nesterov'] else ''}"
  return f"{name}, weight decay {optim['weight_decay']:g} on {decayed}"


def _lr_line(optim, batch_size):
  if optim["schedule"] == "warmup_multistep":
    return (f"{optim['lr']:g}, linear warm-up over {optim['warmup_steps']} iterations from "
            f"{optim['warmup_factor']:g} x lr, x{optim['decay_factor']:g} at iterations "
            f"{', '.join(str(s) for s in optim['decay_steps']) or 'none'}")
  if optim["schedule"] == "warmup_cosine":
    return (f"{optim['lr']:g} (batch {batch_size}), linear warm-up from 0 over "
            f"{optim['warmup_epochs']:g} epochs, then cosine to {optim['min_lr']:g}, per step")
  return (f"{optim['lr']:g}, x{optim['decay_factor']:g} at epochs "
          f"{', '.join(str(e) for e in optim['decay_epochs']) or 'none'}")


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required")
  try:
    lines = card(_CONFIG.value)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  width = max(len(label) for label, _ in lines)
  for label, text in lines:
    print(f"{label:<{width}}  {text}")


if __name__ == "__main__":
  app.run(main)
