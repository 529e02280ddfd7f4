"""COCO box AP of a detector's detections, with pycocotools, as detectron2's COCOEvaluator.

Detections arrive per image in original-image pixels (xyxy, scores, contiguous classes,
a validity mask: the detector's static-shape output rescaled); they become COCO results
as instances_to_coco_json makes them (xyxy -> xywh, class -> dataset category id), are
written to `coco_instances_results.json` (detectron2's file name) and evaluated by
pycocotools' COCOeval (bbox, maxDets 1/10/100) over every evaluated image, those without
detections included. Metrics as _derive_coco_results: AP, AP50, AP75, APs, APm, APl in
percent (NaN where COCOeval has no ground truth for it) and per-category "AP-<name>";
the table goes to `coco_ap.txt`. No detections at all: COCOeval on an empty result set
(every AP 0 where there is ground truth) -- detectron2 reports NaN then, without
evaluating.
"""
import contextlib
import io
import json
import math
import os

import numpy as np

from kd_jax.errors import UserError

METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
RESULTS_FILE = 'coco_instances_results.json'
TABLE_FILE = 'coco_ap.txt'


def detections_to_coco(image_ids, boxes, scores, classes, valid, category_ids) -> list[dict]:
  """COCO results of a batch: image_ids [B], boxes [B, D, 4] xyxy (original pixels),
  scores [B, D], classes [B, D] contiguous, valid [B, D]; padded images (id < 0) skipped."""
  category_ids = np.asarray(category_ids)
  results = []
  for image_id, image_boxes, image_scores, image_classes, image_valid in zip(
      np.asarray(image_ids), np.asarray(boxes, np.float64), np.asarray(scores, np.float64),
      np.asarray(classes), np.asarray(valid, bool)):
    if image_id < 0:
      continue
    for (x1, y1, x2, y2), score, label in zip(image_boxes[image_valid],
                                              image_scores[image_valid],
                                              image_classes[image_valid]):
      results.append({'image_id': int(image_id), 'category_id': int(category_ids[label]),
                      'bbox': [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                      'score': float(score)})
  return results


def _coco_ground_truth(ground_truth):
  """A pycocotools COCO from an instances json path or a parsed instances dict."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  if isinstance(ground_truth, (str, os.PathLike)):
    if not os.path.isfile(ground_truth):
      raise UserError(f'COCO ground truth {ground_truth} not found')
    with contextlib.redirect_stdout(io.StringIO()):
      return COCO(os.fspath(ground_truth))
  coco = COCO()
  coco.dataset = ground_truth
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _load_results(coco_gt, results):
  """COCO.loadRes, or for no results an empty result set over the same images."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  if results:
    with contextlib.redirect_stdout(io.StringIO()):
      return coco_gt.loadRes(results)
  empty = COCO()
  empty.dataset = {'images': list(coco_gt.dataset['images']), 'annotations': [],
                   'categories': list(coco_gt.dataset.get('categories', []))}
  with contextlib.redirect_stdout(io.StringIO()):
    empty.createIndex()
  return empty


def _per_category(precision, coco_gt):
  """{'AP-<name>': %}: precision[:, :, k, area all, maxDets 100] over entries > -1."""
  categories = coco_gt.loadCats(sorted(coco_gt.getCatIds()))  # COCOeval's catIds order
  out = {}
  for k, category in enumerate(categories):
    values = precision[:, :, k, 0, -1]
    values = values[values > -1]
    out[f'AP-{category["name"]}'] = float(np.mean(values) * 100) if values.size else math.nan
  return out


def table(metrics: dict) -> str:
  """The AP table (markdown): the six metrics, then one row per category."""
  head = [f'| {" | ".join(METRICS)} |', f'|{"|".join(["---"] * len(METRICS))}|',
          f'| {" | ".join(f"{metrics[m]:.3f}" for m in METRICS)} |']
  per_category = [(name[3:], value) for name, value in metrics.items() if name.startswith('AP-')]
  if per_category:
    head += ['', '| category | AP |', '|---|---|']
    head += [f'| {name} | {value:.3f} |' for name, value in per_category]
  return '\n'.join(head) + '\n'


def evaluate(ground_truth, results: list[dict], image_ids, output_dir: str | None = None
             ) -> dict[str, float]:
  """COCO box metrics (percent) of `results` on the images `image_ids` of `ground_truth`
  (an instances json path or dict); writes the results json and the table to
  `output_dir` if given."""
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  coco_gt = _coco_ground_truth(ground_truth)
  image_ids = sorted({int(i) for i in image_ids})
  unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
  if unknown:
    raise UserError(f'evaluated image ids not in the COCO ground truth: {unknown[:5]}')
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RESULTS_FILE), 'w', encoding='utf-8') as file:
      json.dump(results, file)
  coco_eval = COCOeval(coco_gt, _load_results(coco_gt, results), 'bbox')
  coco_eval.params.imgIds = image_ids
  with contextlib.redirect_stdout(io.StringIO()):
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  metrics = {name: float(value * 100) if value >= 0 else math.nan
             for name, value in zip(METRICS, coco_eval.stats)}
  metrics.update(_per_category(coco_eval.eval['precision'], coco_gt))
  if output_dir:
    with open(os.path.join(output_dir, TABLE_FILE), 'w', encoding='utf-8') as file:
      file.write(table(metrics))
  return metrics
