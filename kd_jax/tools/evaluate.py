"""Evaluate any checkpoint on a dataset's test split: top-1, top-5, teacher agreement;
for a detector, COCO box AP.

  python -m kd_jax.tools.evaluate --checkpoint=runs/kd_res32x4_res8x4 --model=resnet8x4 \\
      [--teacher=download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth \\
       --teacher_model=resnet32x4] [--dataset=cifar100 --data_dir=DIR]

A checkpoint is whatever kd_jax.checkpoint.load_teacher reads: a PyTorch .pth, a timm
.safetensors (`--input_norm=inception` for timm's ViTs: their own normalisation), a kd_jax
teacher directory, or a finished run's workdir (its final student). For a run's workdir
the data settings and the compute dtype default to the run's own (config.json), so the
numbers match its log. `--dtype=bfloat16` with the same checkpoint as --teacher measures
how often a bfloat16 teacher agrees with float32.

A detector (a `faster_rcnn_*` model: a detection run's workdir, a kd_jax teacher directory
or a detectron2 model-zoo .pkl) is scored by the loop's own evaluator
(kd_jax.detection.evaluation.DetectionEvaluator, the one a detection run ends with): AP,
AP50, AP75, APs, APm, APl (%), with the detections json and the AP table written to --output
(default: a directory checkpoint's eval/, where a run writes them):

  python -m kd_jax.tools.evaluate --checkpoint=runs/coco_det_r18 --model=faster_rcnn_R18_FPN
  python -m kd_jax.tools.evaluate --checkpoint=download_ckpts/detection/model_final_f6e8b1.pkl \\
      --model=faster_rcnn_R101_FPN --source=folder --data_dir=$HOME/coco --output=eval_r101

A run's workdir also gives the detector's settings (config.student.options) and compute
dtype; elsewhere detectron2's defaults hold (--options='{"input_format": "RGB"}' to change),
as does its test input (shortest edge 800, at most 1333).
"""
import json
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
from kd_jax.data import detection_transforms as transforms
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


def evaluate_detector(model, feeder, output_dir=None):
  """COCO box AP (%) of a detector over the feeder's test split, through the evaluator a
  detection run uses (kd_jax.evaluation.create -> DetectionEvaluator); `output_dir`: where
  the detections json and the AP table go."""
  graphdef, state = nnx.split(model)
  return evaluation.create(feeder, graphdef)(state, output_dir=output_dir)


# detectron2's test input (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) for COCO without a run's
# config; the training fields are unused here but the feeder builds its train iterator.
_DETECTION_DATA = dict(
    dataset="coco", source="tfds", data_dir="", period=1, max_boxes=100,
    short_edges=(transforms.MIN_SIZE_TEST,), max_size=transforms.MAX_SIZE_TEST,
    test_short_edge=transforms.MIN_SIZE_TEST, test_max_size=transforms.MAX_SIZE_TEST,
    num_threads=0, worker_count=-1)
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

_REMEDY = ("restore it from a copy, or delete it and pass the data flags (--dataset, "
           "--data_dir)")


def _config(flag):
  """The data part of a run config and the model's settings: the run's own (config.json:
  data, eval_batch_size, student dtype and options) when --checkpoint is a run workdir,
  with any flag given overriding them; else from the flags (detectron2's COCO test input
  for a detector)."""
  detector = flag.model in models.DETECTORS
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=1, eval_batch_size=flag.batch_size))
  config.data = ml_collections.ConfigDict(dict(
      dataset=flag.dataset, source=flag.source, data_dir=flag.data_dir,
      synthetic_train_size=512, synthetic_test_size=256))
  if detector:
    config.eval_batch_size = flag.batch_size if flag["batch_size"].present else 8
    config.data = ml_collections.ConfigDict(dict(_DETECTION_DATA, data_dir=flag.data_dir))
    for name in ("dataset", "source"):
      if flag[name].present:
        config.data[name] = flag[name].value
  dtype, options = "float32", {}
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
    student = run.get("student", {})
    dtype = student.get("dtype", dtype)
    # `weights` initialised the run's training; the checkpoint holds what it became.
    options = {k: v for k, v in student.get("options", {}).items() if k != "weights"}
  if flag.options and not detector:
    raise UserError(f"--options are a detector's settings; {flag.model} takes none")
  if flag.options:
    try:
      given = json.loads(flag.options)
    except json.JSONDecodeError:
      given = None
    if not isinstance(given, dict):
      raise UserError(f"--options is not a JSON object: {flag.options!r}")
    options |= given
  if detector:
    config.batch_size = config.eval_batch_size  # the feeder's (unused) train iterator
  task = getattr(feeders.DATASETS.get(config.data.dataset, (None, None))[1], "task", None)
  if task is not None and (task == "detection") != detector:
    raise UserError(f"--model={flag.model} is {'a detector' if detector else 'no detector'} "
                    f"but dataset {config.data.dataset!r} is a {task} dataset")
  if detector and (flag.teacher or flag.input_norm != "data"):
    raise UserError("--teacher and --input_norm are for classification; a detector "
                    "normalises its own input (--options)")
  return config, train.DTYPES[flag.dtype if flag["dtype"].present else dtype], options


def run(flag):
  """Evaluates flag.checkpoint and prints its metrics; a UserError for bad input."""
  config, dtype, options = _config(flag)
  feeder = feeders.create(config, train.data_mesh())
  model = checkpoint.load_teacher(flag.checkpoint, flag.model, feeder.info.num_classes,
                                  dtype=dtype, options=options)
  if flag.model in models.DETECTORS:
    output = flag.output or (os.path.join(flag.checkpoint, "eval")
                             if os.path.isdir(flag.checkpoint) else None)
    result = evaluate_detector(model, feeder, output)
    print("  ".join(f"{name} {result[name]:.3f}" for name in _METRICS))
    if output:
      print(f"detections and AP table in {output}")
    return
  model = models.with_input_norm(model, feeder.info.mean, feeder.info.std, flag.input_norm)
  teacher = None
  if flag.teacher:
    teacher = checkpoint.load_teacher(flag.teacher, flag.teacher_model, feeder.info.num_classes)
  result = evaluate(model, feeder, teacher)
  print("  ".join(f"{name} {value:.2f}%" for name, value in result.items()))


def define_flags(flag_values=flags.FLAGS):
  """The command's flags (on `flag_values`: a test parses its own)."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("checkpoint", None, ".pth file (a detector's: detectron2 .pkl), kd_jax "
                      "teacher directory or run workdir.", **define)
  flags.DEFINE_string("model", None, "Model name of the checkpoint (kd_jax.models.names()).",
                      **define)
  flags.DEFINE_string("teacher", "", "Optional teacher checkpoint, for agreement.", **define)
  flags.DEFINE_string("teacher_model", "", "Model name of --teacher.", **define)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype of --checkpoint's model (--teacher runs in float32): "
                    "the same file as both measures bfloat16's agreement with float32 "
                    "(a run's workdir: its student's).", **define)
  flags.DEFINE_enum("input_norm", "data", list(models.INPUT_NORMS),
                    "--checkpoint's own input normalisation, as config.teacher.input_norm "
                    "(e.g. inception for timm's ViTs); data: the dataset's.", **define)
  flags.DEFINE_string("dataset", "cifar100", "A dataset of kd_jax.data.feeders.DATASETS "
                      "(a detector's: coco).", **define)
  flags.DEFINE_string("source", "auto", "auto, folder, tfds or synthetic (a detector's: tfds, "
                      "folder or shapes; default tfds).", **define)
  flags.DEFINE_string("data_dir", "", "Folder holding cifar-100-python/ (or TFDS data_dir; "
                      "a detector's: COCO's folder, TFDS data_dir or the shapes' folder).",
                      **define)
  flags.DEFINE_integer("batch_size", 200, "Evaluation batch (a multiple of the device count; "
                       "a detector's: 8).", **define)
  flags.DEFINE_string("options", "", "A detector's settings as a JSON object (DetectorConfig "
                      "fields, as config.student.options); a run's workdir: its own.", **define)
  flags.DEFINE_string("output", "", "A detector's: where the detections json and the AP "
                      "table go (default: a directory checkpoint's eval/).", **define)
  flags.mark_flags_as_required(["checkpoint", "model"], **define)


def main(argv):
  del argv
  try:
    run(flags.FLAGS)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
