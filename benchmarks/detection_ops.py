"""Cost of the static-shape detection ops and the effect of ROIAlign's sampling bound.

  PYTHONPATH=$PWD python benchmarks/detection_ops.py [--part PART]...
  (PART: nms, proposals, inference, roi_bound, roi_time; all when none is given)

nms: greedy NMS of N clustered boxes (N = 1000, 2000, 4000) per block size, beside
torchvision.ops.nms on the same CPU. proposals / inference: find_top_proposals (800x1344
input, detectron2's train and test top-k) and fast_rcnn_inference (1000 proposals x 80
classes). roi_bound: multilevel ROIAlign with max_sampling 2/4/6/8 against unbounded
adaptive sampling (torchvision's roi_align, sampling_ratio 0, on detectron2's level
assignment) for RoIs of a COCO-like spread. roi_time: ROIAlign forward and forward+backward
at 512 RoIs x 256 channels. Medians of 5 runs after a compile, in CPU time of the process
(time.process_time, all threads: a shared, loaded machine inflates wall time much more than
CPU time); torchvision (one thread) is only a reference here.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.detection import anchors, nms, postprocess, proposals, roi_align

FPN_HWS = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]


def median_ms(fn, *args, repeats=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(time.process_time() - start)
  return 1e3 * float(np.median(times))


def clustered(rng, count, image=(800, 1333)):
  """Proposal-like boxes: jittered copies of 50 objects, scores continuous."""
  centres = rng.uniform([0, 0], [image[1] - 200, image[0] - 200], (50, 2))
  sizes = np.exp(rng.uniform(np.log(20), np.log(300), (50, 2)))
  pick = rng.integers(0, 50, count)
  x1y1 = centres[pick] + rng.normal(0, 0.1, (count, 2)) * sizes[pick]
  wh = sizes[pick] * np.exp(rng.normal(0, 0.15, (count, 2)))
  return (np.concatenate([x1y1, x1y1 + wh], 1).astype(np.float32),
          rng.uniform(size=count).astype(np.float32))


def bench_nms():
  import torch, torchvision  # pylint: disable=import-outside-toplevel,multiple-imports
  torch.set_num_threads(1)
  rng = np.random.default_rng(0)
  for count in (1000, 2000, 4000):
    boxes, scores = clustered(rng, count)
    valid = np.ones(count, bool)
    row = {"N": count}
    for block in (64, 256, 1024):
      fn = jax.jit(lambda b, s, v, block=block: nms.nms(b, s, v, 0.7, count, block))
      row[f"block {block} ms"] = round(median_ms(fn, boxes, scores, valid), 1)
      kept = int(np.asarray(fn(boxes, scores, valid)[1]).sum())
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    start = time.process_time()
    for _ in range(5):
      reference = torchvision.ops.nms(tb, ts, 0.7)
    row["torchvision ms"] = round(1e3 * (time.process_time() - start) / 5, 1)
    assert kept == len(reference), (kept, len(reference))
    print(row, "kept", kept)


def bench_proposals():
  rng = np.random.default_rng(1)
  level_anchors = anchors.all_anchors(FPN_HWS)
  deltas = [rng.normal(0, 0.2, a.shape).astype(np.float32) for a in level_anchors]
  logits = [rng.normal(0, 2, len(a)).astype(np.float32) for a in level_anchors]
  for pre, post in ((2000, 1000), (1000, 1000)):
    fn = jax.jit(lambda d, l, pre=pre, post=post: proposals.find_top_proposals(
        level_anchors, d, l, (800, 1333), 0.7, pre, post))
    print({"find_top_proposals pre/post": f"{pre}/{post}",
           "anchors": sum(len(a) for a in level_anchors),
           "ms": round(median_ms(fn, deltas, logits), 1)})


def bench_inference():
  rng = np.random.default_rng(2)
  rois, _ = clustered(rng, 1000)
  boxes = np.tile(rois, (1, 80)) + rng.normal(0, 2, (1000, 320)).astype(np.float32)
  logits = rng.normal(0, 3, (1000, 81))
  scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
  fn = jax.jit(lambda b, s: postprocess.fast_rcnn_inference(b, s, (800, 1333)))
  print({"fast_rcnn_inference R": 1000, "K": 80,
         "pairs > 0.05": int((scores[:, :-1] > 0.05).sum()),
         "ms": round(median_ms(fn, boxes, scores), 1)})


def coco_like_rois(rng, count, image=(800, 1333)):
  """sqrt(area) log-uniform in [16, 640] px, h/w log-uniform in [1/3, 3], inside the image."""
  side = np.exp(rng.uniform(np.log(16), np.log(640), count))
  ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))
  w = np.minimum(side / np.sqrt(ratio), image[1] - 1)
  h = np.minimum(side * np.sqrt(ratio), image[0] - 1)
  x, y = rng.uniform(0, image[1] - w), rng.uniform(0, image[0] - h)
  return np.stack([x, y, x + w, y + h], 1).astype(np.float32)


def bench_roi_bound():
  import torch, torchvision  # pylint: disable=import-outside-toplevel,multiple-imports
  rng = np.random.default_rng(3)
  scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
  rois = coco_like_rois(rng, 2000)
  levels = np.asarray(roi_align.assign_levels(jnp.asarray(rois)))
  for smooth in (False, True):
    maps = []
    for h, w in FPN_HWS[:4]:
      noise = rng.normal(size=(h, w, 16)).astype(np.float32)
      if smooth:  # 5x5 box blur: neighbouring FPN activations are correlated
        noise = np.asarray(jax.lax.reduce_window(noise, 0.0, jax.lax.add, (5, 5, 1), (1, 1, 1),
                                                 "SAME")) / 25
      maps.append(noise)
    exact = np.zeros((len(rois), 7, 7, 16), np.float32)
    need = np.zeros(len(rois), int)
    for level, (features, scale) in enumerate(zip(maps, scales)):
      at = levels == level
      nchw = torch.from_numpy(features.transpose(2, 0, 1)[None].copy())
      exact[at] = torchvision.ops.roi_align(nchw, [torch.from_numpy(rois[at])], 7, scale, 0,
                                            True).numpy().transpose(0, 2, 3, 1)
      side = (rois[at, 2:] - rois[at, :2]).max(1) * scale
      need[at] = np.ceil(side / 7)
    scale_ref = np.abs(exact).mean()
    for bound in (2, 4, 6, 8):
      got = np.asarray(jax.jit(lambda f, b, bound=bound: roi_align.multilevel_roi_align(
          f, b, 7, scales, max_sampling=bound))(maps, rois))
      diff = np.abs(got - exact)
      hit = need > bound
      print({"features": "blurred" if smooth else "white noise", "max_sampling": bound,
             "RoIs past the bound %": round(100 * hit.mean(), 1),
             "mean |diff| / mean |out| %": round(100 * diff.mean() / scale_ref, 3),
             "same, RoIs past the bound %":
                 round(100 * diff[hit].mean() / scale_ref, 2) if hit.any() else 0,
             "max |diff| / mean |out|": round(float(diff.max() / scale_ref), 3)})
  print("RoIs per level", np.bincount(levels, minlength=4).tolist(),
        "needed grid (max side / 7 on its level) histogram 1..8+",
        np.bincount(np.minimum(need, 8), minlength=9)[1:].tolist())


def bench_roi_time():
  rng = np.random.default_rng(4)
  maps = [jnp.asarray(rng.normal(size=(h, w, 256)).astype(np.float32)) for h, w in FPN_HWS[:4]]
  rois = jnp.asarray(coco_like_rois(rng, 512))
  for bound in (2, 4):
    pool = lambda f, b, bound=bound: roi_align.multilevel_roi_align(f, b, max_sampling=bound)
    grad = jax.jit(jax.grad(lambda f, b, pool=pool: jnp.sum(pool(f, b) ** 2)))
    print({"ROIAlign R": 512, "C": 256, "max_sampling": bound,
           "fwd ms": round(median_ms(jax.jit(pool), maps, rois, repeats=3), 1),
           "fwd+bwd ms": round(median_ms(grad, maps, rois, repeats=3), 1)})


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--part", choices=["nms", "proposals", "inference", "roi_bound", "roi_time"],
                      action="append")
  parts = parser.parse_args().part or ["nms", "proposals", "inference", "roi_bound", "roi_time"]
  print(jax.devices()[0].device_kind, jax.__version__)
  for part in parts:
    globals()[f"bench_{part}"]()
