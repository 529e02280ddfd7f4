"""Each 3x3 convolution of a CIFAR ResNet alone: forward, input gradient, weight gradient.

  python -m benchmarks.conv_layers --model resnet20 [--batch-size 64] [--calls 10]

Why: on CPU the train step's gap to PyTorch sits in the convolutions' backward pass; this
shows which of the three convolutions of a layer is slow, in XLA and in PyTorch (oneDNN),
on the same shapes in one process. Prints one JSON line per (layer, op, framework) with
the median ms per call over --repeats alternating blocks of --calls calls and GFLOP/s
(2 * multiply-adds of the convolution; the same count for all three ops).
"""
import argparse
import os
import re
import statistics
import time

import benchmarks

OPS = ("forward", "input_grad", "weight_grad")


def layer_shapes(model):
  """(size, in, out, stride) of each distinct 3x3 conv of CIFAR resnet<6n+2>[x4]."""
  match = re.fullmatch(r"resnet(\d+)(x4)?", model)
  if not match:
    raise ValueError(f"--model must be a CIFAR resnet like resnet20 or resnet8x4, got {model!r}")
  w0, w1, w2, w3 = (32, 64, 128, 256) if match.group(2) else (16, 16, 32, 64)
  shapes = [(32, 3, w0, 1), (32, w0, w1, 1), (32, w1, w1, 1), (32, w1, w2, 2),
            (16, w2, w2, 1), (16, w2, w3, 2), (8, w3, w3, 1)]
  return list(dict.fromkeys(shapes))  # w0 == w1 in the plain resnets


def gflop(batch_size, size, cin, cout, stride):
  out = size // stride
  return 2 * batch_size * out * out * cout * 9 * cin / 1e9


class Timed:
  """One op on fixed arrays: `time_block` runs it `calls` times and waits once."""

  def __init__(self, fn, args, wait, calls):
    self.fn, self.args, self.wait, self.calls = fn, args, wait, calls
    self.wait(self.fn(*self.args))  # compile / warm up

  def time_block(self):
    start = time.perf_counter()
    for _ in range(self.calls):
      out = self.fn(*self.args)
    self.wait(out)
    return time.perf_counter() - start, self.calls


def jax_ops(batch_size, size, cin, cout, stride, calls):
  """The three ops in XLA via lax.conv_general_dilated and its VJP."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch_size, size, size, cin))
  w = jax.random.normal(keys[1], (3, 3, cin, cout))
  g = jax.random.normal(keys[2], (batch_size, size // stride, size // stride, cout))
  fns = {"forward": jax.jit(conv),
         "input_grad": jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
         "weight_grad": jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])}
  args = {"forward": (x, w), "input_grad": (x, w, g), "weight_grad": (x, w, g)}
  return {op: Timed(fns[op], args[op], jax.block_until_ready, calls) for op in OPS}


def torch_ops(batch_size, size, cin, cout, stride, calls):
  """The three ops in PyTorch: F.conv2d and aten.convolution_backward (one output each)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  x = torch.randn(batch_size, cin, size, size)
  w = torch.randn(cout, cin, 3, 3)
  g = torch.randn(batch_size, cout, size // stride, size // stride)

  def backward(mask):
    def fn():
      return torch.ops.aten.convolution_backward(
          g, x, w, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, mask)
    return fn

  fns = {"forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1),
         "input_grad": backward([True, False, False]),
         "weight_grad": backward([False, True, False])}
  return {op: Timed(fns[op], (), lambda _: None, calls) for op in OPS}


def run(model, batch_size=64, calls=10, repeats=5, torch_threads=None, with_torch=True):
  """Times every layer's ops; returns the JSON-ready records."""
  import jax  # pylint: disable=g-import-not-at-top
  info = {"model": model, "batch_size": batch_size, "device": jax.devices()[0].device_kind,
          "jax": jax.__version__, **benchmarks.host_info()}
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(torch_threads or os.cpu_count())
    info |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  records = []
  for shape in layer_shapes(model):
    frameworks = {"kd_jax": jax_ops(batch_size, *shape, calls)}
    if with_torch:
      frameworks["torch"] = torch_ops(batch_size, *shape, calls)
    names = [(fw, op) for fw, ops in frameworks.items() for op in ops]
    samples = benchmarks.interleaved([frameworks[fw][op] for fw, op in names], repeats)
    for (fw, op), blocks in zip(names, samples):
      seconds = statistics.median(wall for wall, _ in blocks)
      records.append({**info, "framework": fw, "op": op, "size": shape[0], "in": shape[1],
                      "out": shape[2], "stride": shape[3], "ms": round(1e3 * seconds, 3),
                      "gflop_per_s": round(gflop(batch_size, *shape) / seconds, 1)})
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--calls", type=int, default=10, help="calls per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks per op")
  parser.add_argument("--torch-threads", type=int, default=None)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  try:
    layer_shapes(args.model)
  except ValueError as e:
    parser.error(str(e))  # one line, exit status 2
  for record in run(args.model, args.batch_size, args.calls, args.repeats, args.torch_threads,
                    not args.no_torch):
    benchmarks.emit(record)


if __name__ == "__main__":
  main()
