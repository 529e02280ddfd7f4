"""COCO box AP of a detector over a detection feeder's test split, as detectron2's
inference_on_dataset + COCOEvaluator: per padded batch, the jitted `detect` and the
rescale to each original image (detector_postprocess), then kd_jax.detection.coco_eval."""
from flax import nnx
import jax
from jax.experimental import multihost_utils

from kd_jax.detection import coco_eval, postprocess


def _on_host(tree):
  """Global arrays -> NumPy on every host (each host holds a slice of the batch)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def detect_original(model, images, image_hw, orig_hw):
  """model.detect, boxes in original-image pixels (empty after clipping: not valid)."""
  detections = model.detect(images, image_hw)
  detections["boxes"], detections["valid"] = jax.vmap(postprocess.detector_postprocess)(
      detections["boxes"], detections["valid"], image_hw, orig_hw)
  return detections


class DetectionEvaluator:
  """AP, AP50, AP75, APs, APm, APl (%) and per-category AP of one detector graph."""

  def __init__(self, feeder, graphdef):
    self.feeder = feeder

    def detect(variables, batch):
      model = nnx.merge(graphdef, *variables)
      detector = getattr(model, "student", model)  # the trainer's student + extras, or bare
      return detect_original(detector, batch["image"], batch["image_hw"], batch["orig_hw"])

    self._detect = jax.jit(detect)

  def __call__(self, *variables, output_dir=None):
    """`output_dir`: where the detections json and the AP table go (or nowhere)."""
    results, image_ids = [], []
    for batch in self.feeder.eval_batches():
      detections = _on_host(self._detect(variables, batch))
      ids = _on_host(batch["image_id"])
      results += coco_eval.detections_to_coco(
          ids, detections["boxes"], detections["scores"], detections["classes"],
          detections["valid"], self.feeder.info.category_ids)
      image_ids += [int(i) for i in ids if i >= 0]
    return coco_eval.evaluate(self.feeder.ground_truth, results, image_ids,
                              output_dir if jax.process_index() == 0 else None)
