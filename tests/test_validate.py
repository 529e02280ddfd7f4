"""Every bad config value is refused before anything runs, in one line (kd_jax.validate).

Property-based: hypothesis draws out-of-range and ill-typed values for every field of
every config family's smoke config; each is either refused by ml_collections' typing (as
`--config.x=...` is on the command line) or by validate.check, as one UserError line
naming the field, with nothing written. Teacher files that are truncated, random bytes or
another model are refused the same way.
"""
import hypothesis
from hypothesis import strategies as st
import ml_collections
import numpy as np
import pytest

from configs import (cifar_at, cifar_ce, cifar_cskd, cifar_cskd_mv, cifar_ctkd, cifar_dist, cifar_dkd,
                     cifar_fitnet, cifar_kd, cifar_ls, cifar_nd, cifar_rkd, coco_det)
from kd_jax import checkpoint, models, validate
from kd_jax.errors import UserError

CONFIGS = [cifar_ce.get_config("smoke"), cifar_kd.get_config("smoke"), cifar_dkd.get_config("smoke"),
           cifar_dist.get_config("smoke"), cifar_cskd.get_config("smoke"),
           cifar_cskd_mv.get_config("smoke"), cifar_ls.get_config("dkd,smoke"),
           cifar_nd.get_config("dkd_nd,smoke"), cifar_nd.get_config("cskd_nd,smoke"),
           cifar_fitnet.get_config("smoke"), cifar_at.get_config("smoke"),
           cifar_rkd.get_config("smoke"), cifar_ctkd.get_config("dkd,smoke"),
           cifar_ls.get_config("mlkd,smoke"), coco_det.get_config("smoke")]


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


# A detector's options (student.options) are checked when the model is built
# (test_detection_task.py), not here.
FIELDS = sorted({(i, field) for i, config in enumerate(CONFIGS) for field, _ in _leaves(config)
                 if not field.startswith("student.options.")})
BAD_NUMBERS = st.sampled_from([0, -1, -0.5, -1e9, float("nan"), float("inf"), -float("inf")])
ILL_TYPED = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none())
# Fields whose value is free (a path, a name of the user's choice, a seed's size...): any
# value of the right type is acceptable, so only ill-typed values are drawn for them.
FREE = ("data.data_dir", "teacher.checkpoint", "source", "method.name", "seed", "skip_nonfinite",
        "method.standardize", "method.cswt", "method.warmup_nd", "compile_cache_dir")


def _set(config, field, value):
  *parents, leaf = field.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(st.sampled_from(FIELDS), st.one_of(BAD_NUMBERS, ILL_TYPED), st.data())
def test_bad_values_of_every_field_are_one_line_user_errors(where, value, draw):
  index, field = where
  config = CONFIGS[index].copy_and_resolve_references()
  old = dict(_leaves(config))[field]
  if field in FREE or isinstance(old, bool):
    value = draw.draw(ILL_TYPED)
  try:
    _set(config, field, value)
  except (TypeError, ValueError):
    return  # ml_collections' typing refuses it: on the command line a one-line flag error
  try:
    validate.check(config)
  except UserError as error:
    assert "\n" not in str(error) and str(error)
    return
  assert _acceptable(config, field, value), (field, value)


# Where 0 is a legitimate value (weights, counts that may be zero); written from METHODS.md
# and the config docs, not from kd_jax.validate.
ZERO_OK = ("bn_group_size", "train_epochs", "weight_decay", "momentum", "synthetic_train_size",
           "synthetic_test_size", "worker_count", "ce_weight", "kd_weight", "weight", "cc_weight",
           "bc_weight", "nd_weight", "alpha", "beta", "gamma", "feat_weight", "distance_weight",
           "angle_weight", "hint_layer", "dkd_weight", "lambda_start", "lambda_end", "min_lr",
           "warmup_epochs", "b1", "b2", "drop_path_rate", "mixup", "cutmix", "mix_prob",
           "switch_prob", "smoothing", "mix_group_size", "erase_prob", "warmup_steps",
           "warmup_factor")


def _acceptable(config, field, value):
  """Whether an accepted value is really valid, by an independent statement of the rules."""
  if field in FREE:
    return True
  if field in ("student.model", "teacher.model") and value in models.names():
    return True  # hypothesis also draws strings mined from the code: a real model's name
  if field == "profile_steps":  # none, or the steps N..M to trace
    steps = tuple(value)
    return not steps or len(steps) == 2 and 1 <= steps[0] <= steps[1]
  if field == "optim.decay_epochs":
    epochs = list(value)
    return epochs == sorted(set(epochs)) and all(0 < e <= config.num_epochs for e in epochs)
  if field == "optim.decay_steps":
    steps = list(value)
    return steps == sorted(set(steps)) and all(0 < step for step in steps)
  return value == 0 and field.split(".")[-1] in ZERO_OK


@pytest.mark.parametrize("field,value,message", [
    ("optim.lr", 0.0, "config.optim.lr=0.0 must be > 0"),
    ("optim.momentum", 1.0, "config.optim.momentum=1.0 must be in [0, 1)"),
    ("data.source", "ftp", "config.data.source='ftp' must be one of"),
    ("data.dataset", "mnist", "config.data.dataset='mnist' must be one of"),
    ("teacher.dtype", "float16", "config.teacher.dtype='float16' must be one of float32, bfloat16"),
    ("student.bn_group_size", 48, "config.batch_size=64 must be a multiple of"),
    ("optim.decay_epochs", (1, 3), "config.optim.decay_epochs=(1, 3) must be increasing epochs"),
    ("method.t_high", 1.5, "t_low=2.0 must be < config.method.t_high=1.5"),
    ("student.model", "resnet9", "unknown model 'resnet9'"),
    ("optim.name", "lamb", "config.optim.name='lamb' must be one of sgd, adamw"),
    ("optim.schedule", "linear", "config.optim.schedule='linear' must be one of step, warmup_cosine"),
    ("profile_steps", (5, 2), "config.profile_steps=(5, 2) must be N,M with 1 <= N <= M"),
    ("profile_steps", (0, 2), "config.profile_steps=(0, 2) must be N,M with 1 <= N <= M"),
    ("compile_cache_dir", "", "config.compile_cache_dir='' must be a directory, 'auto' or 'off'"),
])
def test_named_constraints(field, value, message):
  config = cifar_cskd.get_config("smoke")
  _set(config, field, value)
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[")):
    validate.check(config)


@pytest.fixture(scope="module")
def teacher_pth(tmp_path_factory):
  torch = pytest.importorskip("torch")
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("pth") / "resnet8.pth")
  torch.save({"model": torch_reference.MODELS["resnet8"](10).state_dict()}, path)
  return path


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "wrong_model", "wrong_classes"])
def test_bad_teacher_files_are_one_line_user_errors(tmp_path, teacher_pth, damage):
  path, model, classes = str(tmp_path / "t.pth"), "resnet8", 10
  blob = open(teacher_pth, "rb").read()
  if damage == "truncated":
    blob = blob[:len(blob) // 2]
  elif damage == "random_bytes":
    blob = np.random.default_rng(0).bytes(4096)
  elif damage == "wrong_model":
    model = "resnet14"
  else:
    classes = 100
  with open(path, "wb") as f:
    f.write(blob)
  with pytest.raises(UserError) as error:
    checkpoint.load_teacher(path, model, classes)
  assert "\n" not in str(error.value) and path in str(error.value)
  if damage in ("wrong_model", "wrong_classes"):
    assert "key" in str(error.value) or "shape" in str(error.value)  # names the tensor
