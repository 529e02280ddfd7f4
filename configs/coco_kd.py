"""Distilling Faster R-CNN R-FPN detectors on COCO 2017 as the ND authors ran it
(METHODS.md 13; WangYZ1608/Knowledge-Distillation-via-ND Detection/configs/{KD++,
ReviewKD++,DKD,ReviewKD}/*.yaml, detectron2 0.6).

arg: "<method>,<pair>[,clean_pixels]" or "<method>,smoke"
  method: det_kd_nd (KD++, NDKD), det_reviewkd_nd (ReviewKD++, NDReviewKD), det_dkd (DKD),
          det_reviewkd (ReviewKD)
  pair:   R101_R18, R101_R50, R50_MV2 (teacher_student)
  clean_pixels: the R101_R18 inputs in the right channel order (see below); the default
          is what the authors' configs do.

Recipe (each yaml's SOLVER over Base-Distillation.yaml and detectron2's defaults): 8
images a batch, SGD momentum 0.9, lr 0.01, weight decay 1e-4, linear warm-up over 1000
iterations from 0.001 x lr, x0.1 at the yaml's STEPS; 180k iterations (120k, 160k), but
30,010 (20k, 27k) for KD++ R50_MV2 and DKD R101_R18, as their yamls say.
ResizeShortestEdge (640..800 step 32, max 1333) + flip; test 800 / 1333; COCO AP at the end
(detectron2's EVAL_PERIOD 0). A loop "epoch" is `data.period` iterations: a checkpoint
after each (5000, detectron2's CHECKPOINT_PERIOD; 3001 for the 30,010-iteration runs).

Inputs: the teacher (detectron2 model zoo faster_rcnn_R_101_FPN_3x model_final_f6e8b1.pkl,
R_50 model_final_280758.pkl) takes BGR with detectron2's PIXEL_MEAN and unit std. The
R18 yamls set FORMAT RGB and the ImageNet std but keep the BGR PIXEL_MEAN: the student
subtracts the BGR mean and divides by the BGR std in RGB order, and RCNNKD's
teacher_preprocess_image subtracts the teacher's BGR mean from the RGB image before
reversing the channels, so the teacher too sees its mean reversed. Both are reproduced
by default; `clean_pixels` gives both networks their means (and the student its std) in
the right order. The MV2 yamls leave detectron2's defaults (BGR, unit std).

Student weights: ImageNet-pretrained bottom-up, the file configs/coco_det.py names for that
network (`student.options.weights`; the authors load ReviewKD's combined student+teacher
.pth files, e.g. pretrained/r18-r101.pth, which kd_jax/detection/weights.py reads too).

On a TPU VM (v4-8 / v5e-8: 8 devices, 1 image each):
  python main.py --config=configs/coco_kd.py:det_kd_nd,R101_R18 \\
      --workdir=$HOME/runs/coco_kd_nd_r101_r18 --config.data.data_dir=$HOME/tensorflow_datasets \\
      --config.teacher.checkpoint=$HOME/pretrained/model_final_f6e8b1.pkl
On a GPU host (8 GPUs):
  python main.py --config=configs/coco_kd.py:det_reviewkd_nd,R101_R50 \\
      --workdir=/data/runs/coco_reviewkd_nd_r101_r50 --config.data.source=folder \\
      --config.data.data_dir=/data/coco --config.teacher.checkpoint=/data/pretrained/model_final_f6e8b1.pkl
Offline smoke (synthetic shapes, a tiny teacher trained first in the workdir):
  python main.py --config=configs/coco_kd.py:det_kd_nd,smoke --workdir=/tmp/coco_kd_smoke
"""
import ml_collections

from configs import coco_det
from kd_jax import methods

METHODS = ("det_kd_nd", "det_reviewkd_nd", "det_dkd", "det_reviewkd")
PAIRS = {"R101_R18": ("R101", "R18"), "R101_R50": ("R101", "R50"), "R50_MV2": ("R50", "MV2")}
TEACHER_WEIGHTS = {  # detectron2 model zoo (COCO-Detection/faster_rcnn_R_*_FPN_3x)
    "R101": "download_ckpts/detection/model_final_f6e8b1.pkl",  # 137851257, 42.0 AP
    "R50": "download_ckpts/detection/model_final_280758.pkl",  # 137849458, 40.2 AP
}
LONG, SHORT = (180000, (120000, 160000)), (30010, (20000, 27000))
# Per method and pair: (the yaml's KD settings as config.method fields, (MAX_ITER, STEPS)).
RECIPES = {
    "det_kd_nd": {  # configs/KD++/*.yaml: NDKD KD_WEIGHT, ND_WEIGHT
        "R101_R18": (dict(kd_weight=1.0, nd_weight=1.5), LONG),
        "R101_R50": (dict(kd_weight=1.0, nd_weight=1.0), LONG),
        "R50_MV2": (dict(kd_weight=1.0, nd_weight=1.0), SHORT),
    },
    "det_reviewkd_nd": {  # configs/ReviewKD++/*.yaml: NDReviewKD KD_WEIGHT, ND_WEIGHT
        "R101_R18": (dict(reviewkd_weight=1.2, nd_weight=1.5), LONG),
        "R101_R50": (dict(reviewkd_weight=1.4, nd_weight=1.0), LONG),
        "R50_MV2": (dict(reviewkd_weight=2.2, nd_weight=1.5), LONG),
    },
    "det_dkd": {  # configs/DKD/DKD-*.yaml: cfg.KD.DKD defaults (alpha 1, beta 0.25, T 1)
        "R101_R18": (dict(), SHORT),
        "R101_R50": (dict(), LONG),
        "R50_MV2": (dict(), LONG),
    },
    "det_reviewkd": {  # configs/ReviewKD/ReviewKD-*.yaml: REVIEWKD.LOSS_WEIGHT
        "R101_R18": (dict(reviewkd_weight=1.2), LONG),
        "R101_R50": (dict(reviewkd_weight=1.0), LONG),
        "R50_MV2": (dict(reviewkd_weight=2.0), LONG),
    },
}
BGR_MEAN, RGB_MEAN = coco_det.BGR_MEAN, tuple(reversed(coco_det.BGR_MEAN))
TEACHER_INPUT = dict(input_format="BGR", pixel_mean=BGR_MEAN, pixel_std=(1.0, 1.0, 1.0))
# The students' inputs (as each yaml leaves MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT),
# FREEZE_AT and ImageNet weights: configs/coco_det.py's BACKBONES.


def teacher_input(student, clean_pixels):
  """The teacher's normalisation as RCNNKD.teacher_preprocess_image applies it: with an
  RGB student and a BGR teacher it subtracts the BGR mean in RGB order, then reverses
  the channels (the teacher sees BGR minus the reversed mean) unless `clean_pixels`."""
  student_rgb = coco_det.BACKBONES[student]["input_format"] == "RGB"
  if student_rgb and not clean_pixels:
    return dict(TEACHER_INPUT, pixel_mean=RGB_MEAN)
  return dict(TEACHER_INPUT)


def student_input(student, clean_pixels):
  """The student's options (coco_det.BACKBONES); `clean_pixels` puts the R18 mean and std
  in RGB order."""
  options = dict(coco_det.BACKBONES[student])
  if clean_pixels and options["input_format"] == "RGB":
    options.update(pixel_mean=RGB_MEAN, pixel_std=tuple(reversed(options["pixel_std"])))
  return options


def _parse(arg):
  parts = arg.split(",")
  if len(parts) not in (2, 3) or parts[0] not in METHODS:
    raise ValueError(f"arg {arg!r}: expected <method>,<pair>[,clean_pixels] or "
                     f"<method>,smoke with method one of {', '.join(METHODS)}")
  method, pair = parts[:2]
  clean = len(parts) == 3
  if clean and parts[2] != "clean_pixels":
    raise ValueError(f"arg {arg!r}: the third part may only be 'clean_pixels'")
  if pair != "smoke" and pair not in PAIRS:
    raise ValueError(f"unknown pair {pair!r}; valid: smoke, {', '.join(PAIRS)}")
  return method, pair, clean


def get_config(arg="det_kd_nd,R101_R18"):
  method, pair, clean = _parse(arg)
  config = coco_det.get_base("smoke" if pair == "smoke" else "R50")
  config.method = ml_collections.ConfigDict(methods.defaults(method))
  if pair == "smoke":
    return smoke(config, clean)
  teacher, student = PAIRS[pair]
  fields, (max_iter, steps) = RECIPES[method][pair]
  config.method.update(fields)
  config.student.model = f"faster_rcnn_{student}_FPN"
  config.student.options = ml_collections.ConfigDict(student_input(student, clean))
  config.teacher.model = f"faster_rcnn_{teacher}_FPN"
  config.teacher.options = ml_collections.ConfigDict(teacher_input(student, clean))
  config.teacher.checkpoint = TEACHER_WEIGHTS[teacher]
  config.data.period = 5000 if max_iter % 5000 == 0 else 3001
  config.num_epochs = max_iter // config.data.period
  config.eval_every_epochs = config.num_epochs
  config.batch_size = 8
  config.optim.update(dict(lr=0.01, decay_steps=steps))
  config.source = (f"the ND repository's Detection/configs for {method} {pair} "
                   "(METHODS.md 13)")
  return config


def smoke(config, clean):
  """configs/coco_det.py:smoke for both networks (the same inputs: no channel-order
  quirk to reproduce): synthetic shapes, an R18 teacher trained first in the workdir,
  the class centres from a few of its batches."""
  del clean
  config.teacher.model = config.student.model
  config.teacher.options = ml_collections.ConfigDict(dict(config.student.options))
  config.teacher.checkpoint, config.teacher.train_epochs = "", 2
  if "center_images" in config.method:
    config.method.center_images = 8
  return config
