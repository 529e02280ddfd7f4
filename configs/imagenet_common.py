"""The ImageNet recipe (METHODS.md section 6) and its published teacher->student pairs.

100 epochs, batch 512, SGD momentum 0.9, lr 0.2, x0.1 at 30/60/90, wd 1e-4; data from a
prepared TFDS `imagenet2012` (array_record) through the grain pipeline of
kd_jax/data/imagenet.py. Teachers are torchvision checkpoints (CNN pairs) or timm
`.safetensors` files (ViT pairs) read without torch, by default where
`python -m kd_jax.tools.fetch_teachers imagenet` puts them. `smoke` runs offline on
synthetic 64x64 images through the same pipeline; `smoke_vit` the same with a 2-block ViT
teacher (vit_micro_patch16_64) set up as the ViT pairs are.

ViT teachers (ND's ImageNet/ViT/: timm `vit_small_patch16_224` / `vit_base_patch16_224`,
pretrained, i.e. timm's augreg in21k->in1k weights) see the student's 224 crop. The ND code
normalises it with ImageNet's mean/std for both networks (ViT/Dataset/ImageNet.py), while
timm's ViT weights were trained with 0.5/0.5: `teacher.input_norm` "data" (the default
here) follows the authors' code; "inception" gives the teacher its own normalisation of the
same crop inside the step (kd_jax/models/input_norm.py). ViT teachers run in bfloat16
(`--config.teacher.dtype=float32` for the authors' float32).
"""
import ml_collections

from configs import cifar_common

PAIRS = {
    "res34_res18": ("imagenet_resnet34", "imagenet_resnet18"),
    "res50_mbv1": ("imagenet_resnet50", "imagenet_mobilenetv1"),
    "vits_res18": ("vit_small_patch16_224", "imagenet_resnet18"),
    "vitb_res18": ("vit_base_patch16_224", "imagenet_resnet18"),
}
VIT_TEACHERS = ("vit_small_patch16_224", "vit_base_patch16_224", "vit_micro_patch16_64")
# Where `python -m kd_jax.tools.fetch_teachers imagenet` puts the torchvision teachers.
TEACHER_PATHS = {
    "imagenet_resnet34": "download_ckpts/imagenet_teachers/resnet34-b627a593.pth",
    "imagenet_resnet50": "download_ckpts/imagenet_teachers/resnet50-0676ba61.pth",
    "vit_small_patch16_224":
        "download_ckpts/imagenet_teachers/vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors",
    "vit_base_patch16_224":
        "download_ckpts/imagenet_teachers/vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors",
}


def get_base(method: dict, arg: str, method_overrides=None) -> ml_collections.ConfigDict:
  """The ImageNet recipe for pair `arg` (or 'smoke') with `method` fields."""
  config = cifar_common.get_base(method)
  config.data = ml_collections.ConfigDict(dict(
      dataset="imagenet2012", source="tfds", data_dir="", image_size=224, num_threads=0,
      worker_count=-1, synthetic_train_size=0, synthetic_test_size=0, synthetic_image_size=64,
      train_augment="crop_flip", interpolation="bilinear", bad_images="stop"))
  # num_threads=0, worker_count=-1: decode threads / worker processes from the host's usable
  # cores (kd_jax.data.parallelism); set them to override. train_augment: "crop_flip" or a
  # timm RandAugment policy ("rand-m9-mstd0.5-inc1": DeiT's), applied on the host after the
  # crop and flip; interpolation: "bilinear" or "bicubic" (DeiT's) for the train crop, the
  # eval resize and RandAugment's geometric ops (kd_jax/data/imagenet.py). bad_images: an image
  # that does not decode stops the run naming it ("stop") or is skipped and counted ("skip").
  config.optim.update(dict(lr=0.2, weight_decay=1e-4, decay_epochs=(30, 60, 90)))
  config.num_epochs, config.batch_size, config.eval_batch_size = 100, 512, 1000
  config.source = "mdistiller ImageNet recipe, configs/imagenet (METHODS.md 6)"
  if arg in ("smoke", "smoke_vit"):
    config.data.update(dict(source="synthetic", image_size=64, synthetic_train_size=128,
                            synthetic_test_size=64, num_threads=2, worker_count=0))
    config.teacher.model, config.student.model = "imagenet_resnet18", "imagenet_resnet18"
    config.teacher.train_epochs, config.num_epochs = 1, 1
    config.batch_size, config.eval_batch_size, config.log_every_steps = 32, 32, 2
    config.optim.update(dict(lr=0.05, decay_epochs=(1,)))
    if arg == "smoke_vit":
      config.teacher.model = "vit_micro_patch16_64"
      _vit_teacher(config)
      config.teacher.input_norm = "inception"  # exercises the teacher's own normalisation
    return config
  if arg not in PAIRS:
    raise ValueError(f"unknown pair {arg!r}; valid: smoke, smoke_vit, {', '.join(PAIRS)}")
  config.teacher.model, config.student.model = PAIRS[arg]
  config.teacher.checkpoint = TEACHER_PATHS[config.teacher.model]
  if config.teacher.model in VIT_TEACHERS:
    _vit_teacher(config)
  config.method.update((method_overrides or {}).get(arg, {}))
  return config


def is_vit_pair(arg):
  """True for the ViT -> ResNet-18 pairs (and their smoke stand-in)."""
  return arg == "smoke_vit" or PAIRS.get(arg, ("",))[0] in VIT_TEACHERS


def _vit_teacher(config):
  """ViT teachers: bfloat16 compute, the authors' input normalisation (module docstring)."""
  config.teacher.dtype = "bfloat16"
  config.teacher.input_norm = "data"
