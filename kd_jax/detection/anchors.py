"""FPN anchors in detectron2's order (anchor_generator.py `DefaultAnchorGenerator`).

Cell anchors are unrounded (w = sqrt(size^2 / ratio), h = ratio * w) centred on (0, 0);
they are shifted to every feature-map position (row-major over (y, x)), and the A cell
anchors vary fastest: index = (y * W + x) * A + a, sizes outer and ratios inner within a.
Computed in NumPy: anchors depend only on static shapes, so they are constants under jit.
"""
import math

import numpy as np

FPN_STRIDES = (4, 8, 16, 32, 64)
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes, ratios):
  """[len(sizes) * len(ratios), 4] (DefaultAnchorGenerator.generate_cell_anchors)."""
  anchors = []
  for size in sizes:
    for ratio in ratios:
      w = math.sqrt(size ** 2.0 / ratio)
      h = ratio * w
      anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
  return np.asarray(anchors, np.float32)


def grid_anchors(feature_hw, stride, sizes, ratios, offset=0.0):
  """[H * W * A, 4] float32 anchors of one feature map (DefaultAnchorGenerator._grid_anchors)."""
  height, width = feature_hw
  shifts_x = offset * stride + stride * np.arange(width, dtype=np.float32)
  shifts_y = offset * stride + stride * np.arange(height, dtype=np.float32)
  shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
  shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1)
  return (shifts[:, None, :] + cell_anchors(sizes, ratios)[None]).reshape(-1, 4)


def all_anchors(feature_hws, strides=FPN_STRIDES, sizes=FPN_SIZES, ratios=ASPECT_RATIOS,
                offset=0.0):
  """One [Hl * Wl * A, 4] array per level (p2..p6 by default: detectron2's FPN config)."""
  return [grid_anchors(hw, stride, level_sizes, ratios, offset)
          for hw, stride, level_sizes in zip(feature_hws, strides, sizes)]
