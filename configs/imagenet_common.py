"""The ImageNet recipe (METHODS.md section 6) and its published teacher->student pairs.

100 epochs, batch 512, SGD momentum 0.9, lr 0.2, x0.1 at 30/60/90, wd 1e-4; data from a
prepared TFDS `imagenet2012` (array_record) through the grain pipeline of
kd_jax/data/imagenet.py. Teachers are torchvision checkpoints read without torch, by default where
`python -m kd_jax.tools.fetch_teachers imagenet` puts them. `smoke` runs offline on
synthetic 64x64 images through the same pipeline.
"""
import ml_collections

from configs import cifar_common

PAIRS = {
    "res34_res18": ("imagenet_resnet34", "imagenet_resnet18"),
    "res50_mbv1": ("imagenet_resnet50", "imagenet_mobilenetv1"),
}
# Where `python -m kd_jax.tools.fetch_teachers imagenet` puts the torchvision teachers.
TEACHER_PATHS = {
    "imagenet_resnet34": "download_ckpts/imagenet_teachers/resnet34-b627a593.pth",
    "imagenet_resnet50": "download_ckpts/imagenet_teachers/resnet50-0676ba61.pth",
}


def get_base(method: dict, arg: str, method_overrides=None) -> ml_collections.ConfigDict:
  """The ImageNet recipe for pair `arg` (or 'smoke') with `method` fields."""
  config = cifar_common.get_base(method)
  config.data = ml_collections.ConfigDict(dict(
      dataset="imagenet2012", source="tfds", data_dir="", image_size=224, num_threads=0,
      worker_count=-1, synthetic_train_size=0, synthetic_test_size=0, synthetic_image_size=64))
  # num_threads=0, worker_count=-1: decode threads / worker processes from the host's usable
  # cores (kd_jax.data.parallelism); set them to override.
  config.optim.update(dict(lr=0.2, weight_decay=1e-4, decay_epochs=(30, 60, 90)))
  config.num_epochs, config.batch_size, config.eval_batch_size = 100, 512, 1000
  config.source = "mdistiller ImageNet recipe, configs/imagenet (METHODS.md 6)"
  if arg == "smoke":
    config.data.update(dict(source="synthetic", image_size=64, synthetic_train_size=128,
                            synthetic_test_size=64, num_threads=2, worker_count=0))
    config.teacher.model, config.student.model = "imagenet_resnet18", "imagenet_resnet18"
    config.teacher.train_epochs, config.num_epochs = 1, 1
    config.batch_size, config.eval_batch_size, config.log_every_steps = 32, 32, 2
    config.optim.update(dict(lr=0.05, decay_epochs=(1,)))
    return config
  if arg not in PAIRS:
    raise ValueError(f"unknown pair {arg!r}; valid: smoke, {', '.join(PAIRS)}")
  config.teacher.model, config.student.model = PAIRS[arg]
  config.teacher.checkpoint = TEACHER_PATHS[config.teacher.model]
  config.method.update((method_overrides or {}).get(arg, {}))
  return config
