"""Detector distillation methods (METHODS.md 13): each method's distillation terms, value
and gradient (ReviewKD connectors included), against PyTorch transcriptions of the ND
authors' RCNNKD branches (tests/detection_kd_reference.py) on fixed student outputs,
teacher FPN levels and teacher box-head outputs on the student's RoIs, with padded RoIs
and background RoIs; the class centres (the authors' JSON format, their
emb_fea_distribution); the registry and recipe cards."""
import json

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from kd_jax import methods
from kd_jax.detection import centers as centers_lib
from kd_jax.errors import UserError
from kd_jax.methods import Aux
from kd_jax.methods import det_reviewkd, detection_distill
from tests import detection_kd_reference as ref

K = 80  # foreground classes; label K is the background
B, S, D, C = 2, 6, 16, 8  # images, RoIs an image, box-head width, FPN channels
LEVELS = ((16, 24), (8, 12), (4, 6), (2, 3), (1, 2))  # p2..p6 of a 64x96 input
RNG = np.random.default_rng(1)


def _outputs():
  """Student training outputs and teacher outputs on the student's RoIs: image 1's last
  two RoIs are padding (label -1), each image has background RoIs."""
  valid = np.ones((B, S), bool)
  valid[1, -2:] = False
  classes = RNG.integers(0, K, size=(B, S))
  classes[:, 3:] = K
  classes[~valid] = -1
  relu = lambda x: np.maximum(x, 0.0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  student = {"box_features": f32(relu(RNG.normal(size=(B, S, D)))),
             "class_logits": f32(RNG.normal(size=(B, S, K + 1)) * 2),
             "roi_classes": jnp.asarray(classes), "roi_valid": jnp.asarray(valid),
             "features": [f32(RNG.normal(size=(B, h, w, C))) for h, w in LEVELS]}
  teacher_rois = {"box_features": f32(relu(RNG.normal(size=(B, S, D)) * 1.2)),
                  "class_logits": f32(RNG.normal(size=(B, S, K + 1)) * 2)}
  teacher_features = [f32(RNG.normal(size=(B, h, w, C))) for h, w in LEVELS]
  centers = f32(np.abs(RNG.normal(size=(K + 1, D))))
  return student, teacher_rois, teacher_features, centers


STUDENT, TEACHER_ROIS, TEACHER_FEATURES, CENTERS = _outputs()


def _method(name, **fields):
  return methods.create(ml_collections.ConfigDict(methods.defaults(name, **fields)))


def _t(x, grad=False):
  return torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=grad)


def _valid_rows(x):
  """The authors' concatenation of each image's sampled RoIs (no padding)."""
  return np.asarray(x).reshape((B * S,) + np.asarray(x).shape[2:])[
      np.asarray(STUDENT["roi_valid"]).reshape(-1)]


def _torch_roi_inputs():
  s_emb = _t(_valid_rows(STUDENT["box_features"]), True)
  s_logits = _t(_valid_rows(STUDENT["class_logits"]), True)
  t_emb = _t(_valid_rows(TEACHER_ROIS["box_features"]))
  t_logits = _t(_valid_rows(TEACHER_ROIS["class_logits"]))
  labels = torch.tensor(_valid_rows(STUDENT["roi_classes"]))
  return s_emb, s_logits, t_emb, t_logits, labels


def _scatter(grad):
  """[N valid, ...] torch gradient -> [B, S, ...] with zeros on the padding."""
  grad = grad.numpy()
  out = np.zeros((B * S,) + grad.shape[1:])
  out[np.asarray(STUDENT["roi_valid"]).reshape(-1)] = grad
  return out.reshape((B, S) + grad.shape[1:])


def _close(got, want):
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4,
                             atol=1e-5 * max(np.abs(want).max(), 1e-3))


def _roi_grads(method, aux):
  """Value and gradient of the method's distillation terms w.r.t. the student's RoI
  box features and logits."""
  def total(box_features, class_logits):
    student = STUDENT | {"box_features": box_features, "class_logits": class_logits}
    terms = method.distillation(student, TEACHER_FEATURES, TEACHER_ROIS, aux)
    return sum(terms.values()), terms
  return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
      STUDENT["box_features"], STUDENT["class_logits"])


def test_kd_plus_plus_terms_equal_rcnn_ndkd_loss():
  """NDKD: ND (weight 1.5, the R18-R101 yaml) + KD (T 1, batchmean) on the RoIs."""
  method = _method("det_kd_nd", kd_weight=1.0, nd_weight=1.5)
  (value, terms), grads = _roi_grads(method, Aux(frozen={"class_centers": CENTERS}))
  s_emb, s_logits, t_emb, t_logits, labels = _torch_roi_inputs()
  nd = ref.direct_norm_loss(s_emb, t_emb, _t(CENTERS), labels, nd_weight=1.5)
  kd = ref.kd_loss(s_logits, t_logits, kd_weight=1.0, temperature=1.0)
  (nd + kd).backward()
  assert float(terms["nd"]) == pytest.approx(float(nd.detach()), rel=1e-5)
  assert float(terms["kd"]) == pytest.approx(float(kd.detach()), rel=1e-5)
  assert float(value) == pytest.approx(float((nd + kd).detach()), rel=1e-5)
  _close(grads[0], _scatter(s_emb.grad))
  _close(grads[1], _scatter(s_logits.grad))


def test_dkd_terms_equal_rcnn_dkd_loss():
  method = _method("det_dkd")
  assert (method.alpha, method.beta, method.temperature) == (1.0, 0.25, 1.0)
  (value, terms), grads = _roi_grads(method, Aux())
  _, s_logits, _, t_logits, labels = _torch_roi_inputs()
  dkd = ref.dkd_loss(s_logits, t_logits, labels, 1.0, 0.25, 1.0)
  dkd.backward()
  assert set(terms) == {"dkd"}
  assert float(value) == pytest.approx(float(dkd.detach()), rel=1e-5)
  _close(grads[1], _scatter(s_logits.grad))
  np.testing.assert_array_equal(grads[0], 0.0)


def _connectors(seed=5):
  """The five ABFs with NumPy-drawn values (kernels N(0, 2/fan_in), BatchNorm scales near
  1, biases N(0, 0.1)): eager JAX initialisers would compile once per shape."""
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: det_reviewkd.FPNReviewConnectors(len(LEVELS), C, C, nnx.Rngs(seed))))
  rng = np.random.default_rng(seed)
  values = []
  for path, variable in nnx.to_flat_state(state):
    shape, name = variable.shape, path[-1]
    if name == "kernel":
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ("scale", "var"):
      value = 1.0 + 0.1 * rng.normal(size=shape) if name == "scale" else np.ones(shape)
    elif name == "bias":
      value = rng.normal(size=shape) * 0.1
    else:
      value = np.zeros(shape)
    values.append((path, variable.replace(jnp.asarray(value, variable.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(values))


def _torch_review(connectors):
  """The authors' ReviewKD module (kd_trans.py) with kd_jax's connector weights."""
  module = ref.ReviewKD(channels=C, levels=len(LEVELS)).double()
  oihw = lambda kernel: torch.tensor(np.asarray(kernel[...]), dtype=torch.float64).permute(
      3, 2, 0, 1)
  with torch.no_grad():
    for mine, theirs in zip(connectors.abfs, module.abfs):
      theirs.conv1[0].weight.copy_(oihw(mine.conv1.kernel))
      theirs.conv2[0].weight.copy_(oihw(mine.conv2.kernel))
      for bn_mine, bn_theirs in ((mine.bn1, theirs.conv1[1]), (mine.bn2, theirs.conv2[1])):
        bn_theirs.weight.copy_(torch.tensor(np.asarray(bn_mine.scale[...])))
        bn_theirs.bias.copy_(torch.tensor(np.asarray(bn_mine.bias[...])))
      if mine.att_conv is not None:
        theirs.att_conv[0].weight.copy_(oihw(mine.att_conv.kernel))
        theirs.att_conv[0].bias.copy_(torch.tensor(np.asarray(mine.att_conv.bias[...])))
  return module.train()


def _review_value_and_grads(method, connectors, aux_frozen=None):
  @nnx.jit
  def run(features, connectors):
    def total(features, connectors):
      terms = method.distillation(STUDENT | {"features": features}, TEACHER_FEATURES,
                                  TEACHER_ROIS, Aux(connectors, aux_frozen))
      return sum(terms.values()), terms
    return nnx.value_and_grad(total, argnums=(0, 1), has_aux=True)(features, connectors)
  return run(STUDENT["features"], connectors)


def _torch_hcl(connectors, weight):
  module = _torch_review(connectors)
  nchw = lambda x, grad=False: _t(np.transpose(np.asarray(x), (0, 3, 1, 2)), grad)
  student = [nchw(x, True) for x in STUDENT["features"]]
  hcl = ref.hcl(module(student), [nchw(x) for x in TEACHER_FEATURES]) * weight
  return hcl, student, module


def _check_review_grads(grads, student, module):
  feature_grads, param_grads = grads
  for got, want in zip(feature_grads, student):
    _close(got, want.grad.permute(0, 2, 3, 1).numpy())
  for index, theirs in enumerate(module.abfs):
    _close(param_grads["abfs"][index]["conv1"]["kernel"][...],
           theirs.conv1[0].weight.grad.permute(2, 3, 1, 0).numpy())
    _close(param_grads["abfs"][index]["conv2"]["kernel"][...],
           theirs.conv2[0].weight.grad.permute(2, 3, 1, 0).numpy())


@pytest.mark.slow
def test_reviewkd_term_and_connector_gradients_equal_the_authors_review_module():
  """HCL over p2..p6 after five ABFs (the deepest unfused), weight 1.2 (R18-R101). The
  default suite checks the same through ReviewKD++ below."""
  connectors = _connectors()
  method = _method("det_reviewkd", reviewkd_weight=1.2)
  (value, terms), grads = _review_value_and_grads(method, connectors)
  hcl, student, module = _torch_hcl(connectors, 1.2)
  hcl.backward()
  assert set(terms) == {"reviewkd"}
  assert float(value) == pytest.approx(float(hcl.detach()), rel=1e-5)
  _check_review_grads(grads, student, module)


def test_reviewkd_plus_plus_terms_and_gradients_equal_the_authors_with_released_nd_weight():
  """ReviewKD++ R18-R101: KD_WEIGHT 1.2 on HCL(ABF(p2..p6)), and ND with the released
  code's weight NDKD.ND_WEIGHT = 1.0 though the yaml's ND_WEIGHT is 1.5; gradients of the
  student's FPN levels, RoI box features and the connectors."""
  connectors = _connectors()
  method = _method("det_reviewkd_nd", reviewkd_weight=1.2, nd_weight=1.5)
  student_box = STUDENT["box_features"]

  @nnx.jit
  def run(features, box_features, connectors):
    def total(features, box_features, connectors):
      student = STUDENT | {"features": features, "box_features": box_features}
      terms = method.distillation(student, TEACHER_FEATURES, TEACHER_ROIS,
                                  Aux(connectors, {"class_centers": CENTERS}))
      return sum(terms.values()), terms
    return nnx.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
        features, box_features, connectors)

  (value, terms), (feature_grads, box_grads, param_grads) = run(
      STUDENT["features"], student_box, connectors)
  hcl, student, module = _torch_hcl(connectors, 1.2)
  s_emb, _, t_emb, _, labels = _torch_roi_inputs()
  nd = ref.direct_norm_loss(s_emb, t_emb, _t(CENTERS), labels, nd_weight=1.0)
  (hcl + nd).backward()
  assert float(terms["reviewkd"]) == pytest.approx(float(hcl.detach()), rel=1e-5)
  assert float(terms["nd"]) == pytest.approx(float(nd.detach()), rel=1e-5)
  assert float(value) == pytest.approx(float((hcl + nd).detach()), rel=1e-5)
  _check_review_grads((feature_grads, param_grads), student, module)
  _close(box_grads, _scatter(s_emb.grad))
  assert "released" in method.formula()


def test_reviewkd_plus_plus_nd_weight_is_the_yamls_when_not_as_released():
  released = _method("det_reviewkd_nd", nd_weight=1.5)
  yaml = _method("det_reviewkd_nd", nd_weight=1.5, nd_weight_as_released=False)
  assert (released.effective_nd_weight, yaml.effective_nd_weight) == (1.0, 1.5)
  assert "released" not in yaml.formula() and "1.5 ND" in yaml.formula()


# ------------------------------------------------------------------------ class centres


class _RoITeacher(nnx.Module):
  """A teacher with FasterRCNN.losses' distillation outputs, on given RoI inputs."""

  def __init__(self):
    self.fc = nnx.Linear(4, D, rngs=nnx.Rngs(0))

  def losses(self, batch, key):
    del key
    return {}, {"box_features": jax.nn.relu(self.fc(batch["x"])),
                "roi_classes": batch["classes"], "roi_valid": batch["valid"]}


def test_teacher_class_centers_equal_emb_fea_distribution():
  """Per-class means over several batches (padding out, background a class) equal the
  authors' emb_fea_distribution (which rounds to 4 decimals)."""
  teacher = _RoITeacher()
  batches = []
  for _ in range(3):
    valid = RNG.random((B, S)) > 0.2
    classes = np.where(valid, RNG.integers(0, 4, size=(B, S)), -1)
    classes[0, 0] = 3  # the background of a 3-class detector, always present
    valid[0, 0] = True
    batches.append({"x": jnp.asarray(RNG.normal(size=(B, S, 4)), jnp.float32),
                    "classes": jnp.asarray(classes), "valid": jnp.asarray(valid)})
  centers = detection_distill.teacher_roi_class_centers(teacher, batches, num_classes=3)
  authors = ref.emb_fea_distribution(
      (np.asarray(teacher.losses(b, None)[1]["box_features"]).reshape(-1, D)[
          np.asarray(b["valid"]).reshape(-1)],
       np.asarray(b["classes"]).reshape(-1)[np.asarray(b["valid"]).reshape(-1)])
      for b in batches)
  assert centers.shape == (4, D)
  for label in range(4):
    if str(label) in authors:
      np.testing.assert_allclose(centers[label], authors[str(label)], atol=5.1e-5)
    else:
      np.testing.assert_array_equal(centers[label], 0.0)


def test_authors_centers_file_is_read_by_label_and_errors_are_one_line(tmp_path):
  table = {str(label): RNG.normal(size=D).round(4).tolist() for label in (2, 0, 3, 1)}
  path = tmp_path / "R101_emb.json"
  path.write_text(json.dumps(table, indent=4))
  centers = centers_lib.read_authors_centers(str(path), 4, D)
  np.testing.assert_allclose(centers, [table[str(label)] for label in range(4)], rtol=1e-6)
  bad = {"missing.json": json.dumps({k: v for k, v in table.items() if k != "3"}),
         "short.json": json.dumps(table | {"1": [0.0]}),
         "extra.json": json.dumps(table | {"4": [0.0] * D}),
         "broken.json": "{\"0\": [",
         "list.json": "[]"}
  for name, text in bad.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError):
      centers_lib.read_authors_centers(str(tmp_path / name), 4, D)
  with pytest.raises(UserError, match="not found"):
    centers_lib.read_authors_centers(str(tmp_path / "none.json"), 4, D)


# -------------------------------------------------------------------- registry, cards


@pytest.mark.parametrize("name", ["det_kd_nd", "det_reviewkd", "det_reviewkd_nd", "det_dkd"])
def test_registered_as_detection_methods_with_recipe_cards(name):
  method = _method(name)
  assert method.task == "detection" and method.needs_teacher
  assert "detector losses" in method.formula()
  with pytest.raises(UserError, match="not a field"):
    methods.create(ml_collections.ConfigDict(dict(name=name, not_a_field=1.0)))
