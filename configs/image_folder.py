"""Any method on your own images: one folder per class (kd_jax/data/image_folder.py).

  python main.py --config=configs/image_folder.py:kd --config.data.data_dir=~/tiny-imagenet-200

arg: 'METHOD' or 'METHOD,smoke', METHOD a name of kd_jax.methods.METHODS at its dataclass
defaults (override with --config.method.<field>=...). Every method but the multi-view
ones (cskd_mv, mlkd) runs here: their second (strong) view is made on the device from raw
images, and these are augmented on the host. Data: DIR/train/<class>/*.jpg|png and DIR/val/<class>/..., any resolution,
random-resized-crop (train) or resize + center crop (eval) to data.image_size.

Not a published recipe: the ImageNet one (ResNet-34 -> ResNet-18, SGD, step decay) at
64 px, Tiny-ImageNet's size, with ImageNet's mean/std. The teacher is
config.teacher.checkpoint (e.g. the workdir of an `image_folder.py:ce` run with
--config.student.model=imagenet_resnet34 on the same folder); left empty, it is trained
first, in the workdir, for teacher.train_epochs. 'smoke' shrinks models and epochs.
"""
import ml_collections

from configs import imagenet_common


def get_config(arg="kd"):
  name, _, variant = arg.partition(",")
  config = imagenet_common.get_base({"name": name}, "smoke" if variant == "smoke" else "res34_res18")
  config.data = ml_collections.ConfigDict(dict(
      dataset="image_folder", source="folder", data_dir="", train_split="train", test_split="val",
      image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_threads=0,
      worker_count=-1,  # 0 / -1: from the host's usable cores (kd_jax.data.parallelism)
      train_augment="crop_flip", interpolation="bilinear",  # as in imagenet_common
      bad_images="stop"))
  config.num_epochs, config.batch_size, config.eval_batch_size = 100, 256, 500
  config.teacher.checkpoint, config.teacher.train_epochs = "", config.num_epochs
  config.optim.update(dict(lr=0.1, decay_epochs=(30, 60, 90)))
  config.source = "no published recipe: the ImageNet one at 64 px (configs/image_folder.py)"
  if variant == "smoke":
    config.data.update(dict(image_size=32, num_threads=2, worker_count=0))
    config.teacher.model, config.student.model = "resnet8", "resnet8"
    config.teacher.train_epochs, config.num_epochs = 1, 2
    config.batch_size, config.eval_batch_size, config.log_every_steps = 16, 16, 2
    config.optim.update(dict(lr=0.05, decay_epochs=(1,)))  # within the teacher's 1 epoch too
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of image_folder.py:{name}; valid: smoke")
  return config
