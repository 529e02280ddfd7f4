"""A Faster R-CNN R-FPN detector trained alone on COCO 2017 (METHODS.md 13), as detectron2.

  python main.py --config=configs/coco_det.py:R50 --workdir=runs/coco_det_r50
  python main.py --config=configs/coco_det.py:smoke          # offline, synthetic shapes

arg: the bottom-up network, R18 / R50 / R101 / MV2, or 'smoke'. The recipe is detectron2's
1x schedule (Base-RCNN-FPN.yaml + faster_rcnn_R_50_FPN_1x.yaml, the ND repository's
Base-Distillation.yaml): 16 images a batch, SGD momentum 0.9, lr 0.02, weight decay 1e-4,
90k iterations, x0.1 at 60k and 80k, linear warm-up over 1000 iterations from 0.001 x lr;
ResizeShortestEdge (640..800 step 32, max 1333) + flip, test 800 / 1333. A loop "epoch"
is `data.period` = 5000 iterations (detectron2's CHECKPOINT_PERIOD): a checkpoint after
each, COCO AP every `eval_every_epochs` of them and after the last.

The detector starts from ImageNet weights (detectron2's MODEL.WEIGHTS), read without torch
from `student.options.weights` (kd_jax/detection/weights.py): MSRA R-50.pkl / R-101.pkl
(https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl, R-101.pkl),
torchvision's resnet18-f37072fd.pth, tonylins/pytorch-mobilenet-v2's mobilenet_v2.pth.tar,
expected in download_ckpts/detection/ (a missing file is a one-line error; '' trains
from scratch, which detectron2's recipe never does).

Data: TFDS `coco/2017` (data.source "tfds"), or data.source "folder" with
data.data_dir holding annotations/instances_{train,val}2017.json and train2017/ val2017/.
Inputs as the ND repository's yamls set them: MSRA R50/R101 and MobileNetV2 BGR with
detectron2's pixel mean and unit std (the MV2 yamls keep detectron2's defaults); R18 RGB
with ImageNet's std but the BGR mean (METHODS.md 13; `--config.student.options.pixel_mean=...`
to change).

On a GPU host / TPU VM (8 devices, 2 images each):
  python main.py --config=configs/coco_det.py:R50 --workdir=$HOME/runs/coco_det_r50 \
      --config.data.data_dir=$HOME/tensorflow_datasets
"""
import os
import tempfile

import ml_collections

from configs import cifar_common
from kd_jax.data import detection_transforms as transforms

BGR_MEAN = (103.530, 116.280, 123.675)  # detectron2's PIXEL_MEAN (BGR)
IMAGENET_STD_BGR = (57.375, 57.120, 58.395)  # the ND R18 configs' PIXEL_STD
WEIGHTS = "download_ckpts/detection/"  # where the ImageNet weights files are expected
BACKBONES = {  # bottom-up -> student options (DetectorConfig fields, freeze_at, weights)
    "R18": dict(input_format="RGB", pixel_mean=BGR_MEAN, pixel_std=IMAGENET_STD_BGR,
                weights=WEIGHTS + "resnet18-f37072fd.pth"),
    "R50": dict(input_format="BGR", pixel_mean=BGR_MEAN, pixel_std=(1.0, 1.0, 1.0),
                weights=WEIGHTS + "R-50.pkl"),
    "R101": dict(input_format="BGR", pixel_mean=BGR_MEAN, pixel_std=(1.0, 1.0, 1.0),
                 weights=WEIGHTS + "R-101.pkl"),
    "MV2": dict(input_format="BGR", pixel_mean=BGR_MEAN, pixel_std=(1.0, 1.0, 1.0),
                freeze_at=0, weights=WEIGHTS + "mobilenet_v2.pth.tar"),
}
SMOKE_OPTIONS = dict(pre_nms_topk_train=200, post_nms_topk_train=100, pre_nms_topk_test=100,
                     post_nms_topk_test=50, roi_batch_size_per_image=64,
                     rpn_batch_size_per_image=64)


def get_base(arg):
  """The detectron2 1x recipe for bottom-up `arg` (or 'smoke')."""
  config = cifar_common.get_base(dict(name="detector"))
  config.data = ml_collections.ConfigDict(dict(
      dataset="coco", source="tfds", data_dir="", period=5000, max_boxes=100,
      short_edges=transforms.MIN_SIZE_TRAIN, max_size=transforms.MAX_SIZE_TRAIN,
      test_short_edge=transforms.MIN_SIZE_TEST, test_max_size=transforms.MAX_SIZE_TEST,
      num_threads=0, worker_count=-1))
  config.optim.update(dict(lr=0.02, momentum=0.9, weight_decay=1e-4, decay_epochs=(),
                           schedule="warmup_multistep", decay_steps=(60000, 80000),
                           warmup_steps=1000, warmup_factor=0.001))
  config.num_epochs, config.eval_every_epochs = 18, 18  # 90k iterations; AP at the end
  config.batch_size, config.eval_batch_size, config.log_every_steps = 16, 8, 20
  config.teacher.model = ""
  config.source = ("detectron2 Base-RCNN-FPN + 1x schedule (the ND repository's "
                   "Detection/configs/Base-Distillation.yaml; METHODS.md 13)")
  if arg == "smoke":
    return smoke(config)
  if arg not in BACKBONES:
    raise ValueError(f"unknown backbone {arg!r}; valid: smoke, {', '.join(BACKBONES)}")
  config.student.model = f"faster_rcnn_{arg}_FPN"
  config.student.options = ml_collections.ConfigDict(BACKBONES[arg])
  return config


def smoke(config):
  """A few minutes on CPU: synthetic shapes (3 classes), tiny inputs (every image within
  64 x 64: one padded size, one compile) and RoI counts."""
  config.data.update(dict(source="shapes", period=10, short_edges=(64,), max_size=64,
                          test_short_edge=64, test_max_size=64, max_boxes=4, num_threads=2,
                          worker_count=0,
                          data_dir=os.path.join(tempfile.gettempdir(), "kd_jax_shapes")))
  config.student.model = "faster_rcnn_R18micro_FPN"
  config.student.options = ml_collections.ConfigDict(
      dict(BACKBONES["R18"], weights="", **SMOKE_OPTIONS))
  config.optim.update(dict(lr=0.005, decay_steps=(15,), warmup_steps=5))
  config.num_epochs, config.eval_every_epochs = 2, 2
  config.batch_size, config.eval_batch_size, config.log_every_steps = 8, 8, 5
  return config


def get_config(arg="R50"):
  return get_base(arg)
