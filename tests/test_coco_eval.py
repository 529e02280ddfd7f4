"""COCO box AP (kd_jax.detection.coco_eval): hand-checkable cases and pycocotools against
faster-coco-eval on the same ground truth and perturbed detections."""
import json
import math
import os

import numpy as np
import pytest

from kd_jax.data import coco, shapes
from kd_jax.detection import coco_eval
from kd_jax.errors import UserError

CATEGORIES = [{'id': 3, 'name': 'cat'}, {'id': 1, 'name': 'dog'}, {'id': 8, 'name': 'cow'}]


def _ground_truth(seed=0, num_images=12):
  """Random GT with small (< 32^2), medium and large boxes and a few crowd regions."""
  rng = np.random.default_rng(seed)
  images, annotations = [], []
  for image_id in range(1, num_images + 1):
    images.append({'id': image_id, 'height': 480, 'width': 640})
    for _ in range(int(rng.integers(1, 6))):
      side = float(rng.choice([12, 20, 60, 90, 200, 300]))
      w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
      x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': int(rng.choice([1, 3, 8])), 'bbox': [x, y, w, h],
                          'area': w * h, 'iscrowd': int(rng.random() < 0.08)})
  return {'images': images, 'annotations': annotations, 'categories': CATEGORIES}


def _perfect(truth):
  return [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
           'score': 0.9} for a in truth['annotations'] if not a['iscrowd']]


def _perturbed(truth, seed):
  """Each GT box jittered (some a lot), random scores, missed boxes, false positives."""
  rng = np.random.default_rng(seed)
  results = []
  for a in truth['annotations']:
    if rng.random() < 0.15:
      continue
    x, y, w, h = a['bbox']
    jitter = rng.normal(0, rng.choice([0.03, 0.15, 0.4]), 4) * [w, h, w, h]
    results.append({'image_id': a['image_id'], 'category_id': a['category_id'],
                    'bbox': [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                             max(1.0, h + jitter[3])], 'score': float(rng.random())})
  for image in truth['images']:
    for _ in range(3):
      results.append({'image_id': image['id'], 'category_id': int(rng.choice([1, 3, 8])),
                      'bbox': [*rng.uniform(0, 400, 2), *rng.uniform(5, 150, 2)],
                      'score': float(rng.random() * 0.6)})
  return results


def test_perfect_detections_score_100_and_none_score_0(tmp_path):
  truth = _ground_truth()
  ids = [image['id'] for image in truth['images']]
  perfect = coco_eval.evaluate(truth, _perfect(truth), ids, str(tmp_path))
  for name in (*coco_eval.METRICS, 'AP-cat', 'AP-dog', 'AP-cow'):
    assert perfect[name] == pytest.approx(100.0), name
  with open(tmp_path / coco_eval.RESULTS_FILE) as file:
    assert json.load(file) == _perfect(truth)
  assert '| 100.000 |' in (tmp_path / coco_eval.TABLE_FILE).read_text()
  nothing = coco_eval.evaluate(truth, [], ids)
  for name in coco_eval.METRICS:
    assert nothing[name] == 0.0, name


def test_one_false_positive_above_the_true_one_halves_ap():
  """One GT, detections: a false positive (score .95, medium sized too) above an exact hit
  (.9): precision 0.5 at every recall after COCO's interpolation -> AP 50 at every IoU."""
  truth = {'images': [{'id': 1, 'height': 100, 'width': 100}],
           'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 50, 50],
                            'area': 2500, 'iscrowd': 0}],
           'categories': [{'id': 1, 'name': 'x'}]}
  results = [{'image_id': 1, 'category_id': 1, 'bbox': [62, 62, 35, 35], 'score': 0.95},
             {'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 50, 50], 'score': 0.9}]
  metrics = coco_eval.evaluate(truth, results, [1])
  assert metrics['AP'] == pytest.approx(50.0) and metrics['AP50'] == pytest.approx(50.0)
  assert metrics['APm'] == pytest.approx(50.0)
  assert math.isnan(metrics['APs']) and math.isnan(metrics['APl'])  # no GT of those sizes


def test_images_without_detections_still_count():
  truth = _ground_truth(num_images=4)
  first = [r for r in _perfect(truth) if r['image_id'] == 1]
  only_first = coco_eval.evaluate(truth, first, [1])
  all_images = coco_eval.evaluate(truth, first, [1, 2, 3, 4])
  assert only_first['AP'] == pytest.approx(100.0) and all_images['AP'] < 60
  with pytest.raises(UserError, match='not in the COCO ground truth'):
    coco_eval.evaluate(truth, first, [1, 99])


@pytest.mark.parametrize('seed', [0, 1])
def test_pycocotools_agrees_with_faster_coco_eval(seed):
  faster = pytest.importorskip('faster_coco_eval')
  truth = _ground_truth(seed, num_images=20)
  results = _perturbed(truth, seed + 10)
  ids = [image['id'] for image in truth['images']]
  ours = coco_eval.evaluate(truth, results, ids)
  reference_gt = faster.COCO(truth)
  reference = faster.COCOeval_faster(reference_gt, reference_gt.loadRes(results), 'bbox',
                                     print_function=lambda *a, **k: None)
  reference.params.imgIds = ids
  reference.evaluate()
  reference.accumulate()
  reference.summarize()
  expected = np.asarray(reference.stats[:6]) * 100
  np.testing.assert_allclose([ours[m] for m in coco_eval.METRICS], expected, atol=1e-6)
  assert 5 < ours['AP'] < 95  # a case with something to agree on


def test_detections_to_coco_converts_boxes_and_categories():
  boxes = np.array([[[10, 20, 30, 60], [0, 0, 5, 5]], [[1, 1, 2, 2], [3, 3, 4, 9]]], np.float32)
  scores = np.array([[0.9, 0.8], [0.7, 0.6]], np.float32)
  classes = np.array([[2, 0], [1, 1]], np.int32)
  valid = np.array([[True, False], [True, True]])
  results = coco_eval.detections_to_coco([42, -1], boxes, scores, classes, valid, (3, 5, 9))
  assert results == [{'image_id': 42, 'category_id': 9, 'bbox': [10.0, 20.0, 20.0, 40.0],
                      'score': pytest.approx(0.9)}]


def test_shapes_ground_truth_from_records_matches_its_json(tmp_path):
  """Perfect detections made from the records' boxes score 100 against the json written
  by the shapes dataset and against the records' own ground_truth()."""
  root = shapes.write(str(tmp_path), num_train=2, num_val=9, sizes=(24, 48))
  split = coco.load('validation', 'folder', root)
  table = split.annotations
  boxes = np.zeros((len(table), 4, 4), np.float32)
  valid = np.zeros((len(table), 4), bool)
  classes = np.zeros((len(table), 4), np.int32)
  for i, (image_boxes, image_classes) in enumerate(zip(table.boxes, table.classes)):
    boxes[i, :len(image_boxes)], classes[i, :len(image_boxes)] = image_boxes, image_classes
    valid[i, :len(image_boxes)] = True
  results = coco_eval.detections_to_coco(table.image_ids, boxes, np.ones(valid.shape), classes,
                                         valid, table.category_ids)
  for truth in (split.json_path, table.ground_truth()):
    metrics = coco_eval.evaluate(truth, results, table.image_ids)
    assert metrics['AP'] == pytest.approx(100.0) and metrics['AP50'] == pytest.approx(100.0)
  assert os.path.isfile(split.json_path)
