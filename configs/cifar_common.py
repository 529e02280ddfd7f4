"""The CIFAR-100 recipe of mdistiller/CRD (METHODS.md section 6) and the published pairs.

Method config files import `get_base` and `PAIRS`; a pair is `teacher_student` as in
METHODS.md section 8. `smoke` shrinks everything: synthetic data, a tiny teacher trained
first in the workdir, two short epochs each, no download, under two minutes on 2 cores.
"""
import dataclasses

import ml_collections

from kd_jax import methods
from kd_jax.data import batch_augment
from kd_jax import step as step_lib

# pair name -> (teacher, student): the benchmark's 11 (METHODS.md 6b), then the 5 more
# of the logit standardization and MLKD tables.
PAIRS = {
    "res56_res20": ("resnet56", "resnet20"),
    "res110_res32": ("resnet110", "resnet32"),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4"),
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2"),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1"),
    "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1"),
    "vgg13_mv2": ("vgg13", "MobileNetV2"),
    "res50_mbv2": ("ResNet50", "MobileNetV2"),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2"),
    "res110_res20": ("resnet110", "resnet20"),
    "res32x4_wrn16_2": ("resnet32x4", "wrn_16_2"),
    "res32x4_wrn40_2": ("resnet32x4", "wrn_40_2"),
    "wrn40_2_res8x4": ("wrn_40_2", "resnet8x4"),
    "wrn40_2_mv2": ("wrn_40_2", "MobileNetV2"),
}
SMALL_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")  # lr 0.01 instead of 0.05
# Where mdistiller's download_ckpts script puts the published CIFAR-100 teachers.
TEACHER_PATH = "download_ckpts/cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth"


def get_base(method: dict) -> ml_collections.ConfigDict:
  """The recipe shared by every CIFAR config; `method` is the config.method fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      dataset="cifar100", source="auto", data_dir="", synthetic_train_size=512,
      synthetic_test_size=256))
  # bn_group_size > 0: BatchNorm statistics per group of that many samples of the global
  # batch (what nn.DataParallel gives per GPU); 0: the whole batch.
  # drop_path_rate: stochastic depth of transformer students (DeiT's recipe: 0.1).
  # dtype: the compute of convolutions and matmuls, float32 or bfloat16; parameters,
  # optimizer state, BatchNorm/LayerNorm statistics, softmax and losses stay float32.
  # float32 as mdistiller/CRD trained (no AMP), and for the teacher too.
  config.student = ml_collections.ConfigDict(dict(model="resnet8x4", classifier_init="zoo",
                                                  bn_group_size=0, drop_path_rate=0.0,
                                                  dtype="float32"))
  config.teacher = ml_collections.ConfigDict(dict(
      model="resnet32x4", checkpoint="", dtype="float32", train_epochs=0))
  # Every field of the method, at its dataclass default unless the recipe sets it.
  config.method = ml_collections.ConfigDict(methods.defaults(**method))
  # name sgd|adamw, schedule step|warmup_cosine (kd_jax/step.py make_optimizer).
  config.optim = ml_collections.ConfigDict(dict(
      lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
      decay_epochs=(150, 180, 210), decay_factor=0.1, **step_lib.OPTIM_DEFAULTS))
  # Random erasing, mixup / cutmix, label smoothing on the device: off (DeiT's recipe only).
  config.augment = ml_collections.ConfigDict(dataclasses.asdict(batch_augment.BatchAugment()))
  config.num_epochs = 240
  config.batch_size = 64
  # 200 divides the 10k test set and 1, 2, 4 or 8 devices; on CPU it is ~1.25x faster per
  # image than 1000 (activations stay in cache); on a GPU 50 batches an epoch cost nothing.
  config.eval_batch_size = 200
  config.log_every_steps = 200
  config.checkpoint_keep = 2
  config.skip_nonfinite = False  # True: skip steps whose loss is NaN/inf instead of stopping
  # How the run uses the machine, not what it computes (a resumed run may change them):
  # JAX's persistent compilation cache, "auto" ($KD_JAX_COMPILE_CACHE or ~/.cache/kd_jax/xla),
  # a directory, or "off" (kd_jax/compile_cache.py); profile_steps=(N, M): a profiler trace of
  # steps N..M in <workdir>/tensorboard, () none (kd_jax/profiling.py).
  config.compile_cache_dir = "auto"
  config.profile_steps = ()
  # Whose recipe this is (paper, code, file): shown on the recipe card, kept in config.json.
  config.source = "mdistiller/CRD CIFAR-100 recipe (METHODS.md 6)"
  return config


def for_pair(config, arg, method_overrides=None):
  """Sets teacher, student, lr and per-pair method weights for `arg` (a pair or 'smoke')."""
  if arg == "smoke":
    return smoke(config)
  check_pair(arg)
  teacher, student = PAIRS[arg]
  config.teacher.model, config.student.model = teacher, student
  config.teacher.checkpoint = TEACHER_PATH.format(model=teacher)
  if student in SMALL_LR_STUDENTS:
    config.optim.lr = 0.01
  config.method.update((method_overrides or {}).get(arg, {}))
  return config


def check_pair(arg):
  """A pair name of PAIRS, else a ValueError naming the valid ones (main.py: one line)."""
  if arg not in PAIRS:
    raise ValueError(f"unknown pair {arg!r}; valid: smoke, {', '.join(PAIRS)}")


def smoke(config):
  """Tiny everything: synthetic CIFAR-10-shaped data, resnet14 teacher -> resnet8 student."""
  config.data.dataset, config.data.source = "cifar10", "synthetic"
  config.teacher.model, config.student.model = "resnet14", "resnet8"
  config.teacher.checkpoint, config.teacher.train_epochs = "", 2
  config.num_epochs = 2
  config.optim.decay_epochs = (1,)
  config.eval_batch_size = 128
  config.log_every_steps = 4
  return config
