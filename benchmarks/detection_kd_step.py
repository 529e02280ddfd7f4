"""Step cost of each detection distillation method relative to the detector alone.

  PYTHONPATH=$PWD python benchmarks/detection_kd_step.py [--size 128] [--batch 2] [--steps 3]

One forward + backward of the training loss (what the train step differentiates: the
student's detectron2 losses, plus for the distillation methods the frozen teacher's FPN,
its box head on the student's RoIs and the terms), jitted, on two R18 Faster R-CNNs with
configs/coco_det.py's smoke RoI counts (the smoke configs' networks), a batch of
`--batch` images of `--size` x `--size`. Medians after a compile, wall and process CPU
time (a shared machine inflates wall time more than CPU time).
"""
import argparse
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from configs import coco_det
from kd_jax import methods, models
from kd_jax.methods import Aux, Setup
from kd_jax.train import StudentWithExtras

METHODS = ("detector", "det_kd_nd", "det_dkd", "det_reviewkd", "det_reviewkd_nd")
NUM_CLASSES = 3


def batch(size, count, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, (count, size, size, 3)).astype(np.uint8)
  boxes = np.tile(np.array([[8, 8, size // 2, size // 2], [size // 3, size // 4, size - 4,
                                                         size - 8]], np.float32), (count, 1, 1))
  return images, {"image_hw": np.full((count, 2), size, np.int32), "boxes": boxes,
                  "classes": np.tile(np.array([[0, 2]], np.int32), (count, 1)),
                  "box_valid": np.ones((count, 2), bool)}


def median_times(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - start_wall)
    cpu.append(time.process_time() - start_cpu)
  return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--method", default=",".join(METHODS))
  flags = parser.parse_args()
  options = dict(coco_det.BACKBONES["R18"], **coco_det.SMOKE_OPTIONS)
  create = lambda seed: models.create("faster_rcnn_R18_FPN", NUM_CLASSES, rngs=nnx.Rngs(seed),
                                      **options)
  student, teacher = create(0), create(1)
  teacher_def, teacher_state = nnx.split(teacher)
  images, targets = batch(flags.size, flags.batch)
  centers = jnp.ones((NUM_CLASSES + 1, 1024), jnp.float32)
  rows = []
  for name in flags.method.split(","):
    method = methods.create(methods.defaults(name))
    extras = method.extras(Setup(student, teacher, None, nnx.Rngs(2)))
    trainable = StudentWithExtras(nnx.clone(student), extras)

    @nnx.jit
    def step(trainable, teacher_state, images, targets, method=method):
      def loss(trainable):
        teacher = nnx.merge(teacher_def, teacher_state) if method.needs_teacher else None
        return method.forward(trainable, teacher, [images], targets, 0,
                              Aux(trainable.extras, {"class_centers": centers}, None,
                                  jax.random.key(0)))[0]
      return nnx.value_and_grad(loss)(trainable)

    wall, cpu = median_times(step, trainable, teacher_state, images, targets,
                             repeats=flags.steps)
    rows.append((name, wall, cpu))
    print(f"{name}: {wall:.0f} ms wall, {cpu:.0f} ms CPU", flush=True)
  base_wall, base_cpu = rows[0][1], rows[0][2]
  print("| method | step ms (wall) | / detector | CPU ms | / detector (CPU) |")
  print("|---|---|---|---|---|")
  for name, wall, cpu in rows:
    print(f"| {name} | {wall:.0f} | {wall / base_wall:.2f} | {cpu:.0f} | {cpu / base_cpu:.2f} |")


if __name__ == "__main__":
  main()
