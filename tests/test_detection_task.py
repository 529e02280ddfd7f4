"""Detection as a task of the one training loop (configs/coco_det.py, DetectionFeeder,
the `detector` method, COCO AP evaluation): config errors, a run end to end, resume."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import cifar_kd, coco_det
from kd_jax import train, validate
from kd_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tmp_path, data_dir, epochs=1, period=2):
  config = coco_det.get_config("smoke")
  config.data.data_dir, config.data.period = str(data_dir), period
  config.num_epochs, config.eval_every_epochs = epochs, epochs
  config.log_every_steps = 1
  return config


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("shapes") / "data"


def test_a_classification_method_on_coco_is_one_line():
  config = coco_det.get_config("smoke")
  config.method = cifar_kd.get_config("smoke").method
  with pytest.raises(UserError, match="method 'kd' trains classification; .*'coco' is a "
                                      "detection dataset"):
    validate.check(config)


def test_the_detector_on_cifar_is_one_line():
  config = cifar_kd.get_config("smoke")
  config.method = coco_det.get_config("smoke").method
  with pytest.raises(UserError, match="method 'detector' trains detection; .*'cifar10' is a "
                                      "classification dataset"):
    validate.check(config)


def test_an_unknown_detector_option_is_one_line():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="anchor_size: not an option of a detector"):
    models.create("faster_rcnn_R18micro_FPN", 3, rngs=nnx.Rngs(0), anchor_size=(32,))
  with pytest.raises(UserError, match="takes no options"):
    models.create("resnet8", 10, rngs=nnx.Rngs(0), input_format="RGB")


@pytest.fixture
def numpy_drawn_detectors(monkeypatch):
  """kd_jax.detection.faster_rcnn.create builds the detector it builds (models.create and
  train.create_student around it unchanged), its weights drawn with NumPy: the random
  initialisers' eager XLA compiles, one per parameter shape (~6 CPU s in this file), are
  no part of what these tests check. The heads' inits:
  test_detection_heads.py::test_inits_follow_detectron2; runs from the real inits (finite
  losses, learning, resume): the slow tests of this file."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax.detection import faster_rcnn  # pylint: disable=g-import-not-at-top
  from tests.test_detection_kd_forward import numpy_filled  # pylint: disable=g-import-not-at-top
  create = faster_rcnn.create
  monkeypatch.setattr(faster_rcnn, "create", lambda *args, rngs, **kwargs: numpy_filled(
      lambda: create(*args, rngs=nnx.Rngs(0), **kwargs), 0))


@pytest.mark.usefixtures("numpy_drawn_detectors")
def test_a_detection_run_trains_evaluates_and_writes_ap(tmp_path, shapes_dir):
  """Two iterations and a COCO evaluation through train_and_evaluate: losses logged,
  detections json and AP table in the workdir, AP as the run's metric in summary.json."""
  config = _tiny(tmp_path, shapes_dir)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  assert result.finished and result.metric == "AP" and result.best_epoch == 1
  lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train_lines = [line for line in lines if line["kind"] == "train"]
  assert [line["step"] for line in train_lines] == [1, 2]
  for name in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"):
    assert np.isfinite(train_lines[0][name])
  np.testing.assert_allclose(train_lines[0]["loss"], sum(
      train_lines[0][name] for name in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls",
                                        "loss_box_reg")), rtol=1e-5)
  evals = [line for line in lines if line["kind"] == "eval"]
  assert len(evals) == 1 and {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= evals[0].keys()
  assert os.path.isfile(workdir / "eval" / "coco_instances_results.json")
  assert os.path.isfile(workdir / "eval" / "coco_ap.txt")
  summary = json.load(open(workdir / "summary.json"))
  assert summary["metric"] == "AP" and summary["best_top1"] == evals[0]["AP"]


@pytest.mark.slow
def test_detection_resume_is_bit_identical(tmp_path, shapes_dir):
  """Stopped after 3 of 4 iterations (mid-period) and resumed = run straight through:
  parameters and logged losses bit-identical (the data pipeline's position included).
  Default-suite check of the loop's resume: test_robustness.py (classification)."""
  config = _tiny(tmp_path, shapes_dir, epochs=2, period=2)
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  train.train_and_evaluate(config, str(straight))
  assert not train.train_and_evaluate(config, str(stopped), max_steps=3).finished
  train.train_and_evaluate(config, str(stopped))
  timing = ("images_per_second", "flops_per_second")  # wall-clock, not the run's numbers
  lines = lambda w: [{k: v for k, v in json.loads(line).items() if k not in timing}  # pylint: disable=g-long-lambda
                     for line in open(w / "metrics.jsonl") if '"train"' in line]
  assert lines(straight) == lines(stopped)
  assert json.load(open(straight / "summary.json"))["best_top1"] == json.load(
      open(stopped / "summary.json"))["best_top1"]


@pytest.mark.slow
def test_coco_det_smoke_through_main(tmp_path):
  """The README's detection smoke command, offline, ends with AP in summary.json."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "main.py", "--config=configs/coco_det.py:smoke",
                  f"--workdir={tmp_path / 'run'}",
                  f"--config.data.data_dir={tmp_path / 'shapes'}"], cwd=REPO, env=env,
                 check=True, capture_output=True, timeout=1800)
  summary = json.load(open(tmp_path / "run" / "summary.json"))
  assert summary["metric"] == "AP" and summary["best_top1"] >= 0


@pytest.mark.usefixtures("numpy_drawn_detectors")
def test_weights_option_starts_the_detector_from_a_bottom_up_file(tmp_path):
  """student.options.weights = a detectron2 .pkl of the bottom-up network alone (as
  ImageNet weights are): those tensors land in the backbone, by detectron2 name."""
  import pickle  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  from kd_jax.detection import detectron2_names  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: models.create("faster_rcnn_R18micro_FPN", 3,
                                                  rngs=nnx.Rngs(0)))
  prefix = "backbone.bottom_up."
  rng = np.random.default_rng(0)
  variables = dict(nnx.iter_graph(abstract))
  state = {name: rng.normal(size=detectron2_names.torch_shape(variables[path].shape)).astype(
      np.float32) for name, path in detectron2_names.detectron2_names(abstract).items()
           if name.startswith(prefix)}
  path = tmp_path / "bottom_up.pkl"
  with open(path, "wb") as file:
    pickle.dump({"model": state, "__author__": "test"}, file)
  model = models.create("faster_rcnn_R18micro_FPN", 3, rngs=nnx.Rngs(0), weights=str(path))
  conv = state["backbone.bottom_up.stem.conv1.weight"]  # OIHW -> HWIO
  np.testing.assert_array_equal(np.asarray(model.backbone.bottom_up.stem.conv1.kernel[...]),
                                conv.transpose(2, 3, 1, 0))
  config = coco_det.get_config("R50")
  with pytest.raises(UserError, match="detector weights not found: download_ckpts/detection/"
                                      "R-50.pkl"):
    validate.check(config)


def test_a_saved_detector_starts_another_from_its_weights(tmp_path):
  """faster_rcnn.save_weights writes a model-zoo .pkl in PyTorch layouts (conv OIHW,
  linear (out, in)) that student.options.weights loads back: every variable equal."""
  import pickle  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  from kd_jax.detection import faster_rcnn  # pylint: disable=g-import-not-at-top
  saved = models.create("faster_rcnn_R18micro_FPN", 3, rngs=nnx.Rngs(0))
  path = faster_rcnn.save_weights(saved, str(tmp_path / "model_final.pkl"))
  with open(path, "rb") as file:
    state = pickle.load(file)["model"]
  stem = np.asarray(saved.backbone.bottom_up.stem.conv1.kernel[...])  # HWIO
  np.testing.assert_array_equal(state["backbone.bottom_up.stem.conv1.weight"],
                                stem.transpose(3, 2, 0, 1))
  assert state["roi_heads.box_predictor.cls_score.weight"].shape == (4, 32)  # K+1, fc
  loaded = models.create("faster_rcnn_R18micro_FPN", 3, rngs=nnx.Rngs(1), weights=path)
  for a, b in zip(jax.tree.leaves(nnx.state(saved)), jax.tree.leaves(nnx.state(loaded))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_one_detection_step_on_8_devices_equals_1_device(tmp_path, shapes_dir):
  """The four losses and the updated parameters agree (the batch of 8 sharded 8 ways).
  Default-suite check of the same step: test_a_detection_run_trains_evaluates_and_writes_ap."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import methods  # pylint: disable=g-import-not-at-top
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  config = _tiny(tmp_path, shapes_dir)
  method, loaded = methods.create(config.method), feeders.load(config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = train.data_mesh(devices)
    feeder = feeders.create(config, mesh, loaded)
    trainer = train.Trainer(config, feeder, train.create_student(config, 3), None, method, mesh)
    state, sums = trainer.train_step(trainer.state, trainer.init_metric_sums(), trainer.frozen,
                                     next(feeder.train_batches(0)))
    results.append(jax.device_get((sums, nnx.to_pure_dict(state.params))))
  (sums_1, params_1), (sums_8, params_8) = results
  for key in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"):
    np.testing.assert_allclose(sums_8[key], sums_1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_micro_detector_learns_the_shapes(tmp_path, shapes_dir):
  """main.py's loop on the synthetic shapes (3 classes, 64 x 64) from scratch: 300
  iterations of AdamW (SGD at the recipe's lr diverges without pretrained weights:
  FrozenBN is the identity) reach AP50 >= 8 (13.2, AP 2.9, on 2026-12-07; a random
  detector scores ~0), and pycocotools' AP equals faster-coco-eval's on the detections
  the run wrote."""
  config = _tiny(tmp_path, shapes_dir, epochs=3, period=100)
  config.optim.update(dict(name="adamw", lr=1e-3, weight_decay=1e-4, decay_steps=(250,)))
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  evals = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"eval"' in line]
  assert evals[-1]["AP50"] >= 8, evals[-1]
  from faster_coco_eval import COCO, COCOeval_faster  # pylint: disable=g-import-not-at-top
  from kd_jax.data import coco  # pylint: disable=g-import-not-at-top
  ground_truth = COCO(coco.load("validation", "shapes", str(shapes_dir)).ground_truth())
  detections = ground_truth.loadRes(str(workdir / "eval" / "coco_instances_results.json"))
  other = COCOeval_faster(ground_truth, detections, "bbox", print_function=lambda *a, **k: None)
  other.evaluate(), other.accumulate(), other.summarize()
  np.testing.assert_allclose(100 * other.stats[0], result.last_top1, atol=0.05)


def test_recipe_cards_of_detection_configs():
  """detectron2's iteration schedule, in iterations, on the card (configs/coco_det.py R50:
  the 1x schedule; coco_kd R101_R50 ReviewKD++: its yaml's 180k, 120k / 160k)."""
  from configs import coco_kd  # pylint: disable=g-import-not-at-top
  from kd_jax.tools import recipe  # pylint: disable=g-import-not-at-top
  det = dict(recipe.card(coco_det.get_config("R50")))
  assert det["schedule"].startswith("90000 iterations of batch 16 (a checkpoint every 5000")
  assert det["lr"] == ("0.02, linear warm-up over 1000 iterations from 0.001 x lr, x0.1 at "
                       "iterations 60000, 80000")
  kd = dict(recipe.card(coco_kd.get_config("det_reviewkd_nd,R101_R50")))
  assert kd["schedule"].startswith("180000 iterations of batch 8")
  assert kd["lr"].endswith("x0.1 at iterations 120000, 160000")


def test_a_detectron2_pkl_teacher_loads_by_name(tmp_path):
  """config.teacher.checkpoint = a model-zoo .pkl: the whole detector, by detectron2 name."""
  from kd_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from tests.test_fetch_teachers import _micro_detector_pkl  # pylint: disable=g-import-not-at-top
  state = _micro_detector_pkl(tmp_path / "model_final.pkl")
  teacher = checkpoint.load_teacher(str(tmp_path / "model_final.pkl"),
                                    "faster_rcnn_R18micro_FPN", 3)
  np.testing.assert_array_equal(
      np.asarray(teacher.roi_heads.box_predictor.cls_score.kernel[...]),
      state["roi_heads.box_predictor.cls_score.weight"].T)
