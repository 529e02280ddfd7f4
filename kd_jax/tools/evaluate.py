"""Evaluate any checkpoint on a dataset's test split: top-1, top-5, teacher agreement.

  python -m kd_jax.tools.evaluate --checkpoint=runs/kd_res32x4_res8x4 --model=resnet8x4 \\
      [--teacher=download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \\
       --teacher_model=resnet32x4] [--dataset=cifar100 --data_dir=DIR]

A checkpoint is whatever kd_jax.checkpoint.load_teacher reads: a PyTorch .pth, a timm
.safetensors (`--input_norm=inception` for timm's ViTs: their own normalisation), a kd_jax
teacher directory, or a finished run's workdir (its final student). For a run's workdir
the data settings default to the run's own (config.json), so the numbers match its log. `--dtype=bfloat16` with the
same checkpoint as --teacher measures how often a bfloat16 teacher agrees with float32.
"""
import os
import sys

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import checkpoint, evaluation, models, run_files, train
from kd_jax.data import augment, feeders
from kd_jax.errors import UserError


def batch_sums(logits, labels, mask, teacher_logits=None):
  """classification_sums, and with a teacher its correct top-1 and argmax agreement."""
  sums = evaluation.classification_sums(logits, labels, mask)
  if teacher_logits is not None:
    teacher_top1 = jnp.argmax(teacher_logits, -1)
    sums["teacher_top1"] = jnp.sum(mask * (teacher_top1 == labels))
    sums["agreement"] = jnp.sum(mask * (teacher_top1 == jnp.argmax(logits, -1)))
  return sums


def as_percent(sums):
  """Top-1 / top-5 (%) and, with a teacher, its top-1 and the % of argmax agreement."""
  result = evaluation.as_percent(sums)
  del result["ce"]
  for name in ("teacher_top1", "agreement"):
    if name in sums:
      result[name] = 100 * float(sums[name]) / float(sums["count"])
  return result


def metrics(logits, labels, teacher_logits=None):
  """as_percent of batch_sums over one batch of given logits (every sample valid)."""
  mask = jnp.ones(len(labels), jnp.float32)
  return as_percent(jax.device_get(batch_sums(jnp.asarray(logits, jnp.float32),
                                              jnp.asarray(labels), mask, teacher_logits)))


def evaluate(model, feeder, teacher=None):
  """as_percent over the feeder's test split, through kd_jax.evaluation's one path."""
  mean, std = jnp.asarray(feeder.info.mean), jnp.asarray(feeder.info.std)
  graphdef, state = nnx.split(model)
  teacher_def, teacher_state = nnx.split(teacher) if teacher is not None else (None, None)

  def sums(states, images, labels, mask):
    inputs = augment.normalize(images, mean, std)
    logits = nnx.merge(graphdef, states[0])(inputs, train=False)[0].astype(jnp.float32)
    teacher_logits = None
    if teacher_def is not None:
      teacher_logits = nnx.merge(teacher_def, states[1])(inputs, train=False)[0]
    return batch_sums(logits, labels, mask, teacher_logits)

  totals = evaluation.total(evaluation.batch_sums(feeder, sums), (state, teacher_state),
                            feeder.eval_batches())
  return as_percent(totals)


_REMEDY = ("restore it from a copy, or delete it and pass the data flags (--dataset, "
           "--data_dir)")


def _config(flag):
  """The data part of a run config: the run's own (config.json) when --checkpoint is a
  run workdir, with any dataset flag given overriding it; else from the flags."""
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=1, eval_batch_size=flag.batch_size))
  config.data = ml_collections.ConfigDict(dict(
      dataset=flag.dataset, source=flag.source, data_dir=flag.data_dir,
      synthetic_train_size=512, synthetic_test_size=256))
  config_path = os.path.join(flag.checkpoint, "config.json")
  if os.path.isfile(config_path):
    run = run_files.fields(config_path, run_files.read_json(config_path, _REMEDY),
                           ("data", "eval_batch_size"), _REMEDY)
    config.data = ml_collections.ConfigDict(run["data"])
    for name in ("dataset", "source", "data_dir"):
      if flag[name].present:
        config.data[name] = flag[name].value
    if not flag["batch_size"].present:
      config.eval_batch_size = run["eval_batch_size"]
  return config


def main(argv):
  del argv
  flag = flags.FLAGS
  try:
    feeder = feeders.create(_config(flag), train.data_mesh())
    model = checkpoint.load_teacher(flag.checkpoint, flag.model, feeder.info.num_classes,
                                    dtype=train.DTYPES[flag.dtype])
    model = models.with_input_norm(model, feeder.info.mean, feeder.info.std, flag.input_norm)
    teacher = None
    if flag.teacher:
      teacher = checkpoint.load_teacher(flag.teacher, flag.teacher_model, feeder.info.num_classes)
    result = evaluate(model, feeder, teacher)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print("  ".join(f"{name} {value:.2f}%" for name, value in result.items()))


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, ".pth file, kd_jax teacher directory or run workdir.")
  flags.DEFINE_string("model", None, "Model name of the checkpoint (kd_jax.models.names()).")
  flags.DEFINE_string("teacher", "", "Optional teacher checkpoint, for agreement.")
  flags.DEFINE_string("teacher_model", "", "Model name of --teacher.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype of --checkpoint's model (--teacher runs in float32): "
                    "the same file as both measures bfloat16's agreement with float32.")
  flags.DEFINE_enum("input_norm", "data", list(models.INPUT_NORMS),
                    "--checkpoint's own input normalisation, as config.teacher.input_norm "
                    "(e.g. inception for timm's ViTs); data: the dataset's.")
  flags.DEFINE_string("dataset", "cifar100", "A dataset of kd_jax.data.feeders.DATASETS.")
  flags.DEFINE_string("source", "auto", "auto, folder, tfds or synthetic.")
  flags.DEFINE_string("data_dir", "", "Folder holding cifar-100-python/ (or TFDS data_dir).")
  flags.DEFINE_integer("batch_size", 200, "Evaluation batch (a multiple of the device count).")
  flags.mark_flags_as_required(["checkpoint", "model"])
  app.run(main)
