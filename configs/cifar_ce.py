"""Cross-entropy training of a CIFAR-100 model alone: teachers, and the student baselines.

  python main.py --config=configs/cifar_ce.py:resnet56 --workdir=runs/ce_resnet56

arg: a model name (kd_jax.models.names()) or 'smoke'. A finished run can serve as a
teacher: --config.teacher.checkpoint=runs/ce_resnet56 in a distillation config.
"""
from configs import cifar_common


def get_config(arg="resnet32x4"):
  config = cifar_common.get_base({"name": "ce"})
  if arg == "smoke":
    config = cifar_common.smoke(config)
    config.teacher.train_epochs = 0
    return config
  config.student.model = arg
  if arg in cifar_common.SMALL_LR_STUDENTS:
    config.optim.lr = 0.01
  return config
