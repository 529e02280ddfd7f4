"""The same distillation step in plain PyTorch: the yardstick for kd_jax's bare step.

  python -m benchmarks.torch_step --pair res56_res20 --batch-size 64

Teacher forward (eval mode, no_grad) + student forward/backward + SGD (lr 0.05,
momentum 0.9, weight decay 5e-4) with KD loss 0.1 CE + 0.9 KD(T=4), or CE alone
(`--method ce`, no teacher). Batches are gathered from uint8 tensors already in memory
and get the same random crop + flip and normalisation as kd_jax's step, so this times
what kd_jax's bare step does; a real PyTorch pipeline adds its DataLoader on top. The
models are tests/torch_reference.py's ports of mdistiller's. Prints one JSON line.
"""
import argparse
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

import benchmarks
from tests import torch_reference

MEAN = (0.5071, 0.4867, 0.4408)  # CIFAR-100, METHODS.md section 6
STD = (0.2675, 0.2565, 0.2761)
METHODS = ("ce", "kd")


def create_model(name, num_classes=100):
  """tests/torch_reference.py's model `name`; any CIFAR resnet<6n+2>[x4] depth too."""
  if name in torch_reference.MODELS:
    return torch_reference.MODELS[name](num_classes)
  match = re.fullmatch(r"resnet(\d+)(x4)?", name)
  if not match:
    raise ValueError(f"no PyTorch model {name!r}; valid: {', '.join(torch_reference.MODELS)}")
  widths = [32, 64, 128, 256] if match.group(2) else [16, 16, 32, 64]
  return torch_reference.CifarResNet(int(match.group(1)), widths, num_classes)


def kd_loss(student_logits, teacher_logits, temperature):
  """mdistiller's KD term: T^2 * mean over samples of KL(teacher_T || student_T)."""
  log_p = F.log_softmax(student_logits / temperature, dim=1)
  q = F.softmax(teacher_logits / temperature, dim=1)
  kl = F.kl_div(log_p, q, reduction="none").sum(1)
  return kl.mean() * temperature ** 2


class TorchStep:
  """One PyTorch training step of a pair's student on in-memory data.

  Args:
    pair: a configs.cifar_common pair or 'teacher:student'.
    images: uint8 [N, 32, 32, 3]; labels: int [N].
    batch_size: images per step.
    method: 'kd' or 'ce'.
    device: a torch device string; None picks CUDA when present.
    channels_last: run the models in channels-last memory format.
  """

  def __init__(self, pair, images, labels, batch_size=64, method="kd", device=None,
               num_classes=100, seed=0, channels_last=False):
    if method not in METHODS:
      raise ValueError(f"torch benchmark has methods {METHODS}, not {method!r}")
    self.pair, self.method, self.batch_size = pair, method, batch_size
    self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher_name, student_name = benchmarks.resolve_pair(pair)
    torch.manual_seed(seed)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.teacher = None
    if method == "kd":
      self.teacher = create_model(teacher_name, num_classes).to(
          self.device, memory_format=self.memory_format).eval()
      for p in self.teacher.parameters():
        p.requires_grad_(False)
    self.student = create_model(student_name, num_classes).to(
        self.device, memory_format=self.memory_format).train()
    self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9,
                                     weight_decay=5e-4)
    self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)  # NHWC
    self.labels = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device)
    self.mean = 255 * torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
    self.std = 255 * torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
    self.generator = torch.Generator(device=self.device).manual_seed(seed)
    self.loss_sum = torch.zeros((), device=self.device)
    self._order, self._position = None, 0
    self.record = {"framework": "torch", "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "device": self._device_name(),
                   "platform": self.device.type, "channels_last": channels_last}

  def _device_name(self):
    if self.device.type == "cuda":
      return torch.cuda.get_device_name(self.device)
    return benchmarks.cpu_model()

  def _indices(self):
    """The next batch of a per-epoch random order (last incomplete batch dropped)."""
    n, b = len(self.labels), self.batch_size
    if self._order is None or self._position + b > n:
      self._order = torch.randperm(n, generator=self.generator, device=self.device)
      self._position = 0
    index = self._order[self._position:self._position + b]
    self._position += b
    return index

  def batch(self):
    """RandomCrop(32, pad 4) + horizontal flip + normalisation, as one float NCHW batch."""
    b, g, dev = self.batch_size, self.generator, self.device
    index = self._indices()
    images = F.pad(self.images[index], (0, 0, 4, 4, 4, 4))  # NHWC, zero pad H and W
    offsets = torch.randint(0, 9, (2, b), generator=g, device=dev)
    window = torch.arange(32, device=dev)
    rows = (offsets[0][:, None] + window)[:, :, None]
    cols = (offsets[1][:, None] + window)[:, None, :]
    images = images[torch.arange(b, device=dev)[:, None, None], rows, cols]  # [B,32,32,3]
    flips = torch.rand(b, generator=g, device=dev) < 0.5
    images = torch.where(flips[:, None, None, None], images.flip(2), images)
    x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
    return x.contiguous(memory_format=self.memory_format), self.labels[index]

  def step(self):
    """One optimizer step; the loss is summed on the device (no host sync)."""
    x, y = self.batch()
    logits, _ = self.student(x)
    loss = F.cross_entropy(logits, y)
    if self.teacher is not None:
      with torch.no_grad():
        teacher_logits, _ = self.teacher(x)
      loss = 0.1 * loss + 0.9 * kd_loss(logits, teacher_logits, 4.0)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.loss_sum += loss.detach()

  def _sync(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def run(self, steps):
    """Runs `steps` steps and waits for them; returns the seconds taken."""
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    self._sync()
    return time.perf_counter() - start


class TorchBench:
  """`TorchStep` in the benchmark protocol: warm-up, then timed blocks of `steps`."""

  def __init__(self, torch_step, steps):
    self.torch_step, self.steps = torch_step, steps
    self.record = {"pair": torch_step.pair, "method": torch_step.method,
                   "batch_size": torch_step.batch_size, "mode": "step",
                   **torch_step.record}

  def warmup(self):
    first = self.torch_step.run(1)
    self.torch_step.run(1)
    return first

  def time_block(self):
    return self.torch_step.run(self.steps), self.steps


def random_data(size, seed=0):
  """Random CIFAR-shaped uint8 images and 100-class labels (speed only)."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 100, size).astype(np.int32))


def measure(pairs, methods, batch_size=64, steps=4, repeats=3, channels_last=False,
            device=None):
  """Interleaved step timing of every (pair, method); returns the JSON records."""
  images, labels = random_data(4 * batch_size)
  benches = [TorchBench(TorchStep(pair, images, labels, batch_size, method, device,
                                  channels_last=channels_last), steps)
             for pair in pairs for method in methods]
  first_step = [bench.warmup() for bench in benches]
  samples = benchmarks.interleaved(benches, repeats)
  return [{**bench.record, **benchmarks.summarize(s, batch_size), "steps": steps,
           "repeats": repeats, "first_step_s": round(first, 3), **benchmarks.host_info()}
          for bench, s, first in zip(benches, samples, first_step)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pair", default="res56_res20", help="comma-separated pairs")
  parser.add_argument("--method", default="kd", help="comma-separated: kd, ce")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads")
  parser.add_argument("--channels-last", action="store_true")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  for record in measure(args.pair.split(","), args.method.split(","), args.batch_size,
                        args.steps, args.repeats, args.channels_last):
    benchmarks.emit(record)


if __name__ == "__main__":
  main()
