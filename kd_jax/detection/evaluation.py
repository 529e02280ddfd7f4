"""COCO box AP of a detector over a detection feeder's test split, as detectron2's
inference_on_dataset + COCOEvaluator: the jitted `detect` per padded batch, boxes
rescaled to the original image and clipped (detector_postprocess), then
kd_jax.detection.coco_eval."""
from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np

from kd_jax.detection import coco_eval


def _on_host(tree):
  """Global arrays -> NumPy on every host (each host holds a slice of the batch)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def to_original(boxes, valid, image_hw, orig_hw):
  """detectron2's detector_postprocess: boxes [B, D, 4] in resized pixels -> original
  pixels (scale by orig / resized per axis), clipped; boxes left empty are dropped."""
  scale = (orig_hw / image_hw).astype(np.float64)  # [B, 2] (y, x)
  boxes = boxes.astype(np.float64) * np.stack([scale[:, 1], scale[:, 0]] * 2, -1)[:, None]
  height, width = orig_hw[:, 0, None], orig_hw[:, 1, None]
  boxes = np.stack([np.clip(boxes[..., 0], 0, width), np.clip(boxes[..., 1], 0, height),
                    np.clip(boxes[..., 2], 0, width), np.clip(boxes[..., 3], 0, height)], -1)
  nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
  return boxes, valid & nonempty


class DetectionEvaluator:
  """AP, AP50, AP75, APs, APm, APl (%) and per-category AP of one detector graph."""

  def __init__(self, feeder, graphdef):
    self.feeder = feeder
    self._detect = jax.jit(
        lambda variables, images, image_hw: nnx.merge(graphdef, *variables).detect(
            images, image_hw))

  def __call__(self, *variables, output_dir=None):
    """`output_dir`: where the detections json and the AP table go (or nowhere)."""
    results, image_ids = [], []
    for batch in self.feeder.eval_batches():
      detections = _on_host(self._detect(variables, batch["image"], batch["image_hw"]))
      sizes = _on_host({name: batch[name] for name in ("image_hw", "orig_hw", "image_id")})
      boxes, valid = to_original(np.asarray(detections["boxes"]),
                                 np.asarray(detections["valid"], bool),
                                 np.asarray(sizes["image_hw"]), np.asarray(sizes["orig_hw"]))
      results += coco_eval.detections_to_coco(sizes["image_id"], boxes, detections["scores"],
                                               detections["classes"], valid,
                                               self.feeder.info.category_ids)
      image_ids += [int(i) for i in sizes["image_id"] if i >= 0]
    return coco_eval.evaluate(self.feeder.ground_truth, results, image_ids,
                              output_dir if jax.process_index() == 0 else None)
