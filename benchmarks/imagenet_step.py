"""Step cost of ImageNet pairs (e.g. a ViT-B/16 teacher vs ResNet-34) as a ratio, one process.

  python -m benchmarks.imagenet_step --pair res34_res18,vitb_res18 --config imagenet_kd \
      [--batch-size 8] [--steps 2] [--repeats 3] [--image-size 224] [--teacher-dtype auto]
      [--student-dtype float32,bfloat16]
  python -m benchmarks.imagenet_step --config imagenet_deit \
      --pair 'deit_nd,regnety160_deitb;deit,regnety160_deitb'

Builds each pair from its real config (configs/<config>.py:<pair>: teacher dtype, teacher
input normalisation, method weights) with random-weight teachers and synthetic images of
--image-size, then times `Trainer.train_step` (teacher forward + student forward/backward +
SGD, the host batch already on the device) in alternating blocks, as benchmarks.train_step
does (median over --repeats blocks). Prints one JSON line per pair, then the ratio of every
pair's step time to the first pair's. `--teacher-dtype auto` keeps each config's;
`--student-dtype` (comma-separated, default auto: the config's) times every pair with each.
"""
import argparse
import importlib

import benchmarks
from benchmarks import train_step


class ImageNetVariant:
  """One pair of an ImageNet config, with a random-weight teacher; what StepBench needs."""

  def __init__(self, config_name, pair, batch_size, image_size, teacher_dtype,
               student_dtype="auto"):
    import jax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from kd_jax import methods, models, train  # pylint: disable=g-import-not-at-top
    from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
    config = importlib.import_module(f"configs.{config_name}").get_config(pair)
    config.data.update(dict(source="synthetic", image_size=image_size,
                            synthetic_image_size=image_size,
                            synthetic_train_size=4 * batch_size, synthetic_test_size=batch_size,
                            num_threads=2))
    config.batch_size, config.eval_batch_size = batch_size, batch_size
    if batch_size % max(config.augment.mix_group_size, 1):
      config.augment.mix_group_size = 0  # a batch below the recipe's group: mix it whole
    if teacher_dtype != "auto":
      config.teacher.dtype = teacher_dtype
    if student_dtype != "auto":
      config.student.dtype = student_dtype
    method = methods.create(config.method)
    mesh = train.data_mesh()
    feeder = feeders.create(config, mesh, feeders.load(config))
    num_classes = feeder.info.num_classes
    student = train.create_student(config, num_classes)
    teacher = models.create(config.teacher.model, num_classes, rngs=nnx.Rngs(1),
                            dtype=train.DTYPES[config.teacher.dtype])
    teacher = models.with_input_norm(teacher, feeder.info.mean, feeder.info.std,
                                     config.teacher.get("input_norm", "data"))
    setup = methods.Setup(student, teacher, feeder, nnx.Rngs(2), cached=lambda name, shape, _: (
        jax.random.uniform(jax.random.key(3), shape)))
    self.trainer = train.Trainer(config, feeder, student, teacher, method, mesh,
                                 method.extras(setup), method.frozen(setup))
    self.record = {"config": config_name, "pair": pair, "method": config.method.name,
                   "batch_size": batch_size, "image_size": image_size,
                   "teacher": config.teacher.model, "teacher_dtype": config.teacher.dtype,
                   "student": config.student.model, "student_dtype": config.student.dtype}

  def step_args(self, batch, sums=None):
    t = self.trainer
    return (t.state, t.init_metric_sums() if sums is None else sums, t.frozen, batch)


def run(config_name, pairs, batch_size=8, steps=2, repeats=3, image_size=224,
        teacher_dtype="auto", student_dtypes=("auto",)):
  """Times every pair's step interleaved; returns measurement and ratio records."""
  variants = [ImageNetVariant(config_name, p, batch_size, image_size, teacher_dtype, dtype)
              for p in pairs for dtype in student_dtypes]
  benches = []
  for variant in variants:
    bench = train_step.StepBench(variant, steps)
    # A real host batch (the host feeder's example batch is only shapes), reused every step.
    bench.batch = next(iter(variant.trainer.feeder.train_batches(0)))
    bench.compile_s = bench.warmup()
    benches.append(bench)
  samples = benchmarks.interleaved(benches, repeats)
  info = {**train_step.jax_info(), **benchmarks.host_info()}
  records = [{"kind": "measurement", **b.record, **info, **benchmarks.summarize(s, batch_size),
              "steps": steps, "repeats": repeats, "compile_s": round(b.compile_s, 2)}
             for b, s in zip(benches, samples)]
  base = records[0]
  label = lambda r: f"{r['pair']} student {r['student_dtype']}"
  for record in records[1:]:
    records.append({"kind": "ratio", "numerator": label(record), "denominator": label(base),
                    "step_time_ratio": round(record["step_ms"] / base["step_ms"], 3),
                    "cpu_time_ratio": round(record["cpu_ms_per_step"] / base["cpu_ms_per_step"],
                                            3)})
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.imagenet_step")
  parser.add_argument("--config", default="imagenet_kd", help="configs/<name>.py")
  parser.add_argument("--pair", default="res34_res18,vitb_res18", help="comma-separated "
                      "(';'-separated when the config's arguments hold commas, e.g. "
                      "'deit_nd,regnety160_deitb;deit,regnety160_deitb'); ratios are to the first")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=3, help="timed blocks per pair")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--teacher-dtype", default="auto", choices=("auto", "float32", "bfloat16"))
  parser.add_argument("--student-dtype", default="auto",
                      help="comma-separated: auto (the config's), float32, bfloat16")
  args = parser.parse_args(argv)
  pairs = args.pair.split(";" if ";" in args.pair else ",")
  for record in run(args.config, pairs, args.batch_size, args.steps,
                    args.repeats, args.image_size, args.teacher_dtype,
                    args.student_dtype.split(",")):
    benchmarks.emit(record)


if __name__ == "__main__":
  main()
