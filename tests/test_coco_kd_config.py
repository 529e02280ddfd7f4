"""configs/coco_kd.py against the ND repository's Detection/configs yamls (values
transcribed here from the yamls, METHODS.md 13): per-pair weights, solver, the authors'
pixel normalisation and its clean variant, bad args."""
import pytest

from configs import coco_kd
from kd_jax import methods

# (method, pair) -> (method fields, MAX_ITER, STEPS) as each yaml states them.
YAMLS = {
    ("det_kd_nd", "R101_R18"): (dict(kd_weight=1.0, nd_weight=1.5), 180000, (120000, 160000)),
    ("det_kd_nd", "R101_R50"): (dict(kd_weight=1.0, nd_weight=1.0), 180000, (120000, 160000)),
    ("det_kd_nd", "R50_MV2"): (dict(kd_weight=1.0, nd_weight=1.0), 30010, (20000, 27000)),
    ("det_reviewkd_nd", "R101_R18"): (dict(reviewkd_weight=1.2, nd_weight=1.5), 180000,
                                      (120000, 160000)),
    ("det_reviewkd_nd", "R101_R50"): (dict(reviewkd_weight=1.4, nd_weight=1.0), 180000,
                                      (120000, 160000)),
    ("det_reviewkd_nd", "R50_MV2"): (dict(reviewkd_weight=2.2, nd_weight=1.5), 180000,
                                     (120000, 160000)),
    ("det_dkd", "R101_R18"): (dict(alpha=1.0, beta=0.25, temperature=1.0), 30010,
                              (20000, 27000)),
    ("det_dkd", "R101_R50"): (dict(alpha=1.0, beta=0.25, temperature=1.0), 180000,
                              (120000, 160000)),
    ("det_dkd", "R50_MV2"): (dict(alpha=1.0, beta=0.25, temperature=1.0), 180000,
                             (120000, 160000)),
    ("det_reviewkd", "R101_R18"): (dict(reviewkd_weight=1.2), 180000, (120000, 160000)),
    ("det_reviewkd", "R101_R50"): (dict(reviewkd_weight=1.0), 180000, (120000, 160000)),
    ("det_reviewkd", "R50_MV2"): (dict(reviewkd_weight=2.0), 180000, (120000, 160000)),
}


@pytest.mark.parametrize("method,pair", sorted(YAMLS))
def test_each_pair_has_its_yamls_weights_and_solver(method, pair):
  fields, max_iter, steps = YAMLS[(method, pair)]
  config = coco_kd.get_config(f"{method},{pair}")
  for name, value in fields.items():
    assert config.method[name] == value, name
  assert config.num_epochs * config.data.period == max_iter
  assert tuple(config.optim.decay_steps) == steps
  assert (config.batch_size, config.optim.lr, config.optim.momentum,
          config.optim.weight_decay) == (8, 0.01, 0.9, 1e-4)
  assert (config.optim.warmup_steps, config.optim.warmup_factor) == (1000, 0.001)
  assert config.eval_every_epochs == config.num_epochs  # EVAL_PERIOD 0: AP at the end
  teacher, student = pair.split("_")
  assert config.teacher.model == f"faster_rcnn_{teacher}_FPN"
  assert config.student.model == f"faster_rcnn_{student}_FPN"
  methods.create(config.method)


def test_r18_pixels_are_the_authors_unless_clean():
  """RGB student with the BGR mean/std; the teacher sees the mean reversed (RCNNKD's
  teacher_preprocess_image normalises before reversing the channels)."""
  bgr_mean, bgr_std = (103.530, 116.280, 123.675), (57.375, 57.120, 58.395)
  config = coco_kd.get_config("det_kd_nd,R101_R18")
  student, teacher = dict(config.student.options), dict(config.teacher.options)
  weights = dict(weights="download_ckpts/detection/resnet18-f37072fd.pth")  # ImageNet
  assert student == dict(input_format="RGB", pixel_mean=bgr_mean, pixel_std=bgr_std, **weights)
  assert teacher == dict(input_format="BGR", pixel_mean=bgr_mean[::-1],
                         pixel_std=(1.0, 1.0, 1.0))
  clean = coco_kd.get_config("det_kd_nd,R101_R18,clean_pixels")
  assert dict(clean.student.options) == dict(input_format="RGB", pixel_mean=bgr_mean[::-1],
                                             pixel_std=bgr_std[::-1], **weights)
  assert dict(clean.teacher.options)["pixel_mean"] == bgr_mean


@pytest.mark.parametrize("pair,student", [("R101_R50", "R50"), ("R50_MV2", "MV2")])
def test_bgr_students_and_their_teachers_use_detectron2s_defaults(pair, student):
  config = coco_kd.get_config(f"det_dkd,{pair}")
  defaults = dict(input_format="BGR", pixel_mean=(103.530, 116.280, 123.675),
                  pixel_std=(1.0, 1.0, 1.0))
  assert dict(config.teacher.options) == defaults
  expected = defaults | (dict(freeze_at=0) if student == "MV2" else {})
  weights = {"R50": "R-50.pkl", "MV2": "mobilenet_v2.pth.tar"}[student]  # ImageNet
  assert dict(config.student.options) == expected | dict(
      weights=f"download_ckpts/detection/{weights}")


@pytest.mark.parametrize("arg", ["det_kd_nd", "kd,R101_R18", "det_kd_nd,R18_R101",
                                 "det_kd_nd,R101_R18,bgr", "det_dkd,R50_MV2,clean_pixels,x"])
def test_bad_args_name_the_valid_ones(arg):
  with pytest.raises(ValueError):
    coco_kd.get_config(arg)


def test_smoke_trains_its_teacher_first_and_needs_few_center_images():
  config = coco_kd.get_config("det_reviewkd_nd,smoke")
  assert config.data.source == "shapes" and config.teacher.train_epochs > 0
  assert config.teacher.model == config.student.model and not config.teacher.checkpoint
  assert config.method.center_images == 8
