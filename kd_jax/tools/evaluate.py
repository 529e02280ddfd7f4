"""Evaluate any checkpoint on a dataset's test split: top-1, top-5, teacher agreement.

  python -m kd_jax.tools.evaluate --checkpoint=runs/kd_res32x4_res8x4 --model=resnet8x4 \\
      [--teacher=download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \\
       --teacher_model=resnet32x4] [--dataset=cifar100 --data_dir=DIR]

A checkpoint is whatever kd_jax.checkpoint.load_teacher reads: a PyTorch .pth, a kd_jax
teacher directory, or a finished run's workdir (its final student). For a run's workdir
the data settings default to the run's own (config.json), so the numbers match its log. `--dtype=bfloat16` with the
same checkpoint as --teacher measures how often a bfloat16 teacher agrees with float32.
"""
import json
import os
import sys

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import checkpoint, data, train
from kd_jax.errors import UserError


def test_logits(model, dataset, batch_size=500):
  """Float32 logits [N, C] of `model` (eval mode) on the test split, in order."""
  graphdef, state = nnx.split(model)
  mean, std = jnp.asarray(dataset.mean), jnp.asarray(dataset.std)

  @jax.jit
  def forward(state, images):
    logits, _ = nnx.merge(graphdef, state)(data.normalize(images, mean, std), train=False)
    return logits.astype(jnp.float32)

  images = dataset.test_images
  return np.concatenate([np.asarray(forward(state, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def metrics(logits, labels, teacher_logits=None):
  """Top-1 / top-5 (%) and, with a teacher, the % of samples whose argmax agrees."""
  top5 = np.argsort(-logits, axis=1)[:, :5]
  result = {"top1": 100 * np.mean(top5[:, 0] == labels),
            "top5": 100 * np.mean(np.any(top5 == labels[:, None], axis=1))}
  if teacher_logits is not None:
    result["teacher_top1"] = 100 * np.mean(np.argmax(teacher_logits, 1) == labels)
    result["agreement"] = 100 * np.mean(np.argmax(teacher_logits, 1) == top5[:, 0])
  return result


def _data_settings(flag):
  """Dataset flags, defaulting to the run's config when --checkpoint is a run workdir."""
  settings = {"dataset": flag.dataset, "source": flag.source, "data_dir": flag.data_dir}
  config_path = os.path.join(flag.checkpoint, "config.json")
  if os.path.isfile(config_path):
    with open(config_path) as f:
      run_data = json.load(f)["data"]
    for name in settings:
      if not flag[name].present:
        settings[name] = run_data[name]
    settings["synthetic_train_size"] = run_data["synthetic_train_size"]
    settings["synthetic_test_size"] = run_data["synthetic_test_size"]
  settings["data_dir"] = settings["data_dir"] or None
  return settings


def main(argv):
  del argv
  flag = flags.FLAGS
  try:
    dataset = data.load(**_data_settings(flag))
    model = checkpoint.load_teacher(flag.checkpoint, flag.model, dataset.num_classes,
                                    dtype=train.DTYPES[flag.dtype])
    teacher_logits = None
    if flag.teacher:
      teacher = checkpoint.load_teacher(flag.teacher, flag.teacher_model, dataset.num_classes)
      teacher_logits = test_logits(teacher, dataset)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  result = metrics(test_logits(model, dataset), dataset.test_labels, teacher_logits)
  print("  ".join(f"{name} {value:.2f}%" for name, value in result.items()))


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, ".pth file, kd_jax teacher directory or run workdir.")
  flags.DEFINE_string("model", None, "Model name of the checkpoint (kd_jax.models.names()).")
  flags.DEFINE_string("teacher", "", "Optional teacher checkpoint, for agreement.")
  flags.DEFINE_string("teacher_model", "", "Model name of --teacher.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype of --checkpoint's model (--teacher runs in float32): "
                    "the same file as both measures bfloat16's agreement with float32.")
  flags.DEFINE_string("dataset", "cifar100", "cifar10 or cifar100.")
  flags.DEFINE_string("source", "auto", "auto, folder, tfds or synthetic.")
  flags.DEFINE_string("data_dir", "", "Folder holding cifar-100-python/ (or TFDS data_dir).")
  flags.mark_flags_as_required(["checkpoint", "model"])
  app.run(main)
