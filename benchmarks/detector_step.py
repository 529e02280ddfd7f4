"""Training-step time and memory of a Faster R-CNN R-FPN alone at COCO's input size.

  PYTHONPATH=$PWD python -m benchmarks.detector_step [--backbones R18,R50] [--height 800]
      [--width 1344] [--batch 2] [--steps 3]

One jitted forward + backward of detectron2's training loss (kd_jax.detection.faster_rcnn,
detectron2's defaults: 80 classes, 2000/1000 proposals, 512 RoIs an image) on `--batch`
images padded to `--height` x `--width` (800 x 1333 rounded up to 32: the largest
training bucket), each with 8 boxes; random weights (the speed does not depend on them).
Prints the compile time, the median step time after it, and XLA's memory analysis of the
compiled step (arguments + temporaries), per device.
"""
import argparse
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import models


def _batch(height, width, count, seed=0):
  rng = np.random.default_rng(seed)
  corners = rng.uniform(0, [width / 2, height / 2], (count, 8, 2))
  sizes = rng.uniform(32, [width / 2, height / 2], (count, 8, 2))
  return {"image": jnp.asarray(rng.integers(0, 255, (count, height, width, 3)), jnp.uint8),
          "image_hw": jnp.tile(jnp.asarray([height, width], jnp.int32), (count, 1)),
          "boxes": jnp.asarray(np.concatenate([corners, corners + sizes], -1), jnp.float32),
          "classes": jnp.asarray(rng.integers(0, 80, (count, 8)), jnp.int32),
          "box_valid": jnp.ones((count, 8), bool)}


def measure(backbone, height, width, count, steps):
  """(compile s, median step s, bytes of arguments + temporaries) of one training step."""
  model = models.create(f"faster_rcnn_{backbone}_FPN", 80, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, batch, key):
    losses, _ = nnx.merge(graphdef, params, rest).losses(batch, key)
    return sum(losses.values())

  batch, key = _batch(height, width, count), jax.random.key(0)
  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, batch, key).compile()
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, batch, key))
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  used = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) if memory else None
  return compile_seconds, float(np.median(times)), used


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="R18,R50")
  parser.add_argument("--height", type=int, default=800)
  parser.add_argument("--width", type=int, default=1344)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  unknown = [b for b in args.backbones.split(",") if f"faster_rcnn_{b}_FPN" not in models.DETECTORS]
  if unknown:
    parser.error(f"unknown backbone {unknown[0]!r}; valid: "
                 f"{', '.join(name[12:-4] for name in models.DETECTORS)}")
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch} at "
        f"{args.height}x{args.width}")
  for backbone in args.backbones.split(","):
    compile_seconds, step_seconds, used = measure(backbone, args.height, args.width,
                                                  args.batch, args.steps)
    memory = f"{used / 2**30:.2f} GiB" if used is not None else "n/a"
    print(f"{backbone}-FPN: compile {compile_seconds:.1f} s, step {step_seconds:.2f} s "
          f"(median of {args.steps}), arguments + temporaries {memory}", flush=True)


if __name__ == "__main__":
  main()
