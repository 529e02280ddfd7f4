"""AT, NST, SP, PKT and RKD (METHODS.md 9) against NCHW NumPy references, finite differences,
torch autograd (when installed), invariances, edge cases, jit/vmap and 8-device sharding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses
from kd_jax.losses.feature_kd import adaptive_avg_pool
from tests import loss_reference as ref


def _array(seed, shape, scale=1.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


MAP_SHAPE, FEATURE_SHAPE = (4, 4, 4, 3), (4, 6)

# name -> (kd_jax loss, its keyword arguments, NumPy reference, student shape, teacher
# shape). Maps are NHWC; sizes that differ exercise the pooling (odd ratios give
# overlapping bins; 7x5 -> 4x4 pools H and W with different bins, so a swapped axis shows).
# The default-argument cases on MAP_SHAPE / FEATURE_SHAPE share their compilation with
# the tests further down.
CASES = {
    "at_same_size": (losses.at, {}, ref.at, MAP_SHAPE, MAP_SHAPE),
    "at_student_larger_non_square": (losses.at, {}, ref.at, (2, 7, 5, 3), (2, 4, 4, 6)),
    "at_teacher_larger_odd_p3": (losses.at, {"p": 3.0}, ref.at, (2, 3, 3, 4), (2, 7, 7, 2)),
    "nst_same_size": (losses.nst, {}, ref.nst, MAP_SHAPE, MAP_SHAPE),
    "nst_student_larger_non_square": (losses.nst, {}, ref.nst, (2, 6, 9, 3), (2, 3, 3, 2)),
    "nst_teacher_larger": (losses.nst, {}, ref.nst, (2, 2, 2, 4), (2, 5, 5, 3)),
    "sp_same_shape": (losses.sp, {}, ref.sp, MAP_SHAPE, MAP_SHAPE),
    "sp_other_shapes": (losses.sp, {}, ref.sp, (5, 4, 4, 3), (5, 2, 2, 8)),
    "pkt_same_width": (losses.pkt, {}, ref.pkt, FEATURE_SHAPE, FEATURE_SHAPE),
    "pkt_other_widths_eps": (losses.pkt, {"eps": 1e-3}, ref.pkt, (6, 8), (6, 12)),
    "rkd_same_width": (losses.rkd, {}, ref.rkd, FEATURE_SHAPE, FEATURE_SHAPE),
    "rkd_other_widths_weights": (losses.rkd, {"distance_weight": 2.0, "angle_weight": 0.5},
                                 ref.rkd, (5, 7), (5, 3)),
}
LOSSES = {"at": losses.at, "nst": losses.nst, "sp": losses.sp, "pkt": losses.pkt, "rkd": losses.rkd}


def _compiled(name):
  """jit(value_and_grad) w.r.t. (student, teacher) of a case or a plain loss, one per
  (loss, keywords) so compilations are shared (eager dispatch compiles far more on CPU)."""
  loss, kwargs = (CASES[name][0], CASES[name][1]) if name in CASES else (LOSSES[name], {})
  return _compiled_loss(loss, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _compiled_loss(loss, kwargs):
  return jax.jit(jax.value_and_grad(functools.partial(loss, **dict(kwargs)), argnums=(0, 1)))


def _value(name, student, teacher):
  return _compiled(name)(student, teacher)[0]


def _reference(name):
  _, kwargs, reference, _, _ = CASES[name]
  return functools.partial(reference, **kwargs)


def _inputs(name):
  *_, student_shape, teacher_shape = CASES[name]
  seed = sorted(CASES).index(name)
  return _array(2 * seed, student_shape), _array(2 * seed + 1, teacher_shape)


def _shape(name):
  return FEATURE_SHAPE if name in ("pkt", "rkd") else MAP_SHAPE


def _central_difference(fn, x, index, h=1e-5):
  plus, minus = x.astype(np.float64), x.astype(np.float64)
  plus[index] += h
  minus[index] -= h
  return (fn(plus) - fn(minus)) / (2 * h)


@pytest.mark.parametrize("size_in,size_out", [((8, 8), (4, 4)), ((7, 5), (3, 3)), ((5, 6), (5, 4)),
                                              ((3, 2), (5, 4)), ((6, 6), (6, 6))])
def test_adaptive_avg_pool_matches_torch_semantics(size_in, size_out):
  """Bins [floor(i*in/out), ceil((i+1)*in/out)), including overlapping and upsampling ones."""
  x = _array(0, (2, *size_in, 3))
  pooled = np.asarray(jax.jit(adaptive_avg_pool, static_argnums=1)(x, size_out))
  expected = ref.adaptive_avg_pool_nchw(ref.nchw(x), *size_out).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-7)
  try:
    import torch
  except ImportError:
    return
  by_torch = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(ref.nchw(x)), size_out)
  np.testing.assert_allclose(pooled, by_torch.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_matches_reference_and_teacher_gets_no_gradient(name):
  student, teacher = _inputs(name)
  value, (_, teacher_grad) = _compiled(name)(student, teacher)
  assert value.shape == () and value.dtype == jnp.float32
  np.testing.assert_allclose(value, _reference(name)(student, teacher), rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(teacher_grad, 0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences_of_reference(name):
  """jax.grad w.r.t. the student vs central differences of the float64 reference, 8 coordinates."""
  reference = _reference(name)
  student, teacher = _inputs(name)
  grad = np.asarray(_compiled(name)(student, teacher)[1][0])
  rng = np.random.default_rng(1)
  flat_indices = rng.choice(student.size, size=8, replace=False)
  for flat_index in flat_indices:
    index = np.unravel_index(flat_index, student.shape)
    expected = _central_difference(lambda s: reference(s, teacher), student, index)
    np.testing.assert_allclose(grad[index], expected, rtol=1e-3, atol=1e-4 * np.abs(grad).max())


def _torch_losses(torch):
  """The five losses in PyTorch (NCHW, float64), from the spec, for autograd comparisons."""
  F = torch.nn.functional

  def common_size(fs, ft):  # the larger-H map pooled to (H, H) of the other
    if fs.shape[2] > ft.shape[2]:
      fs = F.adaptive_avg_pool2d(fs, (ft.shape[2], ft.shape[2]))
    elif fs.shape[2] < ft.shape[2]:
      ft = F.adaptive_avg_pool2d(ft, (fs.shape[2], fs.shape[2]))
    return fs, ft

  def at(fs, ft, p=2.0):
    fs, ft = common_size(fs, ft)
    attention = lambda f: F.normalize(f.pow(p).mean(1).flatten(1), dim=1)
    return (attention(fs) - attention(ft)).pow(2).mean()

  def nst(fs, ft):
    fs, ft = (F.normalize(f.flatten(2), dim=2) for f in common_size(fs, ft))
    kernel = lambda a, b: torch.einsum("bid,bjd->bij", a, b).pow(2).mean()
    return kernel(ft, ft) + kernel(fs, fs) - 2 * kernel(fs, ft)

  def sp(fs, ft):
    similarity = lambda f: F.normalize(f.flatten(1) @ f.flatten(1).T, dim=1)
    return (similarity(ft) - similarity(fs)).pow(2).sum() / fs.shape[0] ** 2

  def pkt(fs, ft, eps=1e-7):
    def probabilities(f):
      f = f / (f.norm(dim=1, keepdim=True) + eps)
      kernel = (f @ f.T + 1) / 2
      return kernel / kernel.sum(dim=1, keepdim=True)
    p_s, p_t = probabilities(fs), probabilities(ft)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()

  def rkd(fs, ft, distance_weight=25.0, angle_weight=50.0):
    def distances(e):
      squares = e.pow(2).sum(1)
      d = (squares[:, None] + squares[None, :] - 2 * e @ e.T).clamp(min=1e-12).sqrt()
      d = d * (1 - torch.eye(len(e), dtype=e.dtype))
      return d / d[d > 0].mean()

    def angles(e):
      u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)
      return u @ u.transpose(1, 2)

    return (distance_weight * F.smooth_l1_loss(distances(fs), distances(ft))
            + angle_weight * F.smooth_l1_loss(angles(fs), angles(ft)))

  return {"at": at, "nst": nst, "sp": sp, "pkt": pkt, "rkd": rkd}


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_full_gradient_match_torch(name):
  torch = pytest.importorskip("torch")
  torch_fn = functools.partial(_torch_losses(torch)[name.split("_")[0]], **CASES[name][1])
  student, teacher = _inputs(name)
  to_torch = ref.nchw if student.ndim == 4 else lambda x: np.asarray(x, np.float64)
  s = torch.tensor(to_torch(student), requires_grad=True)
  value = torch_fn(s, torch.tensor(to_torch(teacher)))
  value.backward()
  torch_grad = s.grad.numpy()
  if student.ndim == 4:
    torch_grad = torch_grad.transpose(0, 2, 3, 1)
  value_jax, (grad, _) = _compiled(name)(student, teacher)
  np.testing.assert_allclose(value_jax, value.item(), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(grad, torch_grad, rtol=1e-3, atol=1e-4 * np.abs(torch_grad).max())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_when_student_equals_teacher(name):
  teacher = _array(5, _shape(name))
  value, (grad, _) = _compiled(name)(teacher, teacher)
  assert abs(float(value)) < 1e-6
  np.testing.assert_allclose(grad, 0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["at", "nst"])
def test_zero_against_the_own_pooled_map(name):
  """The larger map is the one pooled: 8x8 against its own 4x4 pooling gives 0. H equal,
  W larger (an error in mdistiller, which compares H only): the wider map is pooled."""
  student = _array(6, (4, 8, 8, 3))
  assert abs(float(_value(name, student, adaptive_avg_pool(student, (4, 4))))) < 1e-6
  teacher = _array(7, (4, 4, 8, 3))
  assert abs(float(_value(name, adaptive_avg_pool(teacher, (4, 4)), teacher))) < 1e-6


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_invariances(name):
  """All five: a common batch permutation. AT, NST, SP, RKD: a positive student scale
  (PKT up to its eps); NST: per-channel scales; SP: the flattening order; RKD: a shift."""
  fn = functools.partial(_value, name)
  student, teacher = _array(9, _shape(name)), _array(10, _shape(name))
  value = float(fn(student, teacher))
  perm = np.array([2, 0, 3, 1])
  np.testing.assert_allclose(fn(student[perm], teacher[perm]), value, rtol=1e-5)
  np.testing.assert_allclose(fn(3.7 * student, teacher), value, rtol=1e-5)
  np.testing.assert_allclose(fn(student, 0.2 * teacher), value, rtol=1e-5)
  if name == "nst":
    np.testing.assert_allclose(fn(student * np.array([0.5, 2.0, 7.0], np.float32), teacher), value,
                               rtol=1e-5)
  if name == "sp":
    shuffled = student.reshape(len(student), -1)[:, np.random.default_rng(0).permutation(48)]
    np.testing.assert_allclose(fn(shuffled.reshape(student.shape), teacher), value, rtol=1e-5)
  if name == "rkd":
    np.testing.assert_allclose(fn(student + 3.0, teacher - 1.0), value, rtol=1e-4)


def test_rkd_batch_of_one_is_zero():
  """No pair to average over (NaN in mdistiller): distance term 0; all angles are 0 too."""
  assert float(_value("rkd", _array(11, (1, 6)), _array(12, (1, 6)))) == 0.0


EDGE_INPUTS = ["batch_of_one", "zero_student", "all_zero", "identical", "bfloat16", "large"]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("inputs", EDGE_INPUTS)
def test_finite_value_and_gradient(name, inputs):
  fn, shape = functools.partial(_value, name), _shape(name)
  student, teacher = _array(13, shape), _array(14, shape)
  student, teacher = {
      "batch_of_one": (student[:1], teacher[:1]),
      "zero_student": (np.zeros_like(student), teacher),
      "all_zero": (np.zeros_like(student), np.zeros_like(teacher)),
      "identical": (teacher, teacher),
      "bfloat16": (jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)),
      "large": (1e4 * student, -1e4 * teacher),
  }[inputs]
  value, (grad, _) = _compiled(name)(student, teacher)
  assert value.dtype == jnp.float32
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
  f32 = [np.asarray(x, np.float32) for x in (student, teacher)]
  if inputs == "bfloat16":  # upcast: the value of the float32 of those inputs
    np.testing.assert_allclose(value, fn(*f32), rtol=1e-6)
  if inputs == "large":
    np.testing.assert_allclose(value, getattr(ref, name)(*f32), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_vmap_over_groups(name):
  shape = _shape(name)
  students, teachers = _array(15, (3, *shape)), _array(16, (3, *shape))
  batched = jax.jit(jax.vmap(jax.value_and_grad(LOSSES[name])))(students, teachers)
  for i in range(3):
    value, (grad, _) = _compiled(name)(students[i], teachers[i])
    np.testing.assert_allclose(batched[0][i], value, rtol=1e-5)
    np.testing.assert_allclose(batched[1][i], grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())


def test_on_8_sharded_devices_equal_the_definition():
  """Batch-sharded inputs under jit: SP, PKT, RKD are batch-level and must see the global
  batch; values and (still batch-sharded) gradients against the float64 references."""
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  s_map, t_map, s_features, t_features = arrays = (
      _array(20, (16, 4, 4, 3)), _array(21, (16, 8, 8, 5)), _array(22, (16, 6)),
      _array(23, (16, 10)))

  def everything(s_map, t_map, s_features, t_features):
    values = {name: LOSSES[name](s_map, t_map) for name in ("at", "nst", "sp")}
    values.update({name: LOSSES[name](s_features, t_features) for name in ("pkt", "rkd")})
    map_grad = jax.grad(lambda s: losses.sp(s, t_map) + losses.at(s, t_map))(s_map)
    return values, map_grad, jax.grad(losses.rkd)(s_features, t_features)

  values, map_grad, feature_grad = jax.jit(everything)(*(jax.device_put(x, sharded)
                                                         for x in arrays))
  assert map_grad.sharding.spec[0] == "data" and feature_grad.sharding.spec[0] == "data"
  for name in ("at", "nst", "sp"):
    np.testing.assert_allclose(values[name], getattr(ref, name)(s_map, t_map), rtol=2e-5)
  for name in ("pkt", "rkd"):
    np.testing.assert_allclose(values[name], getattr(ref, name)(s_features, t_features), rtol=2e-5)
  map_loss = lambda s: ref.sp(s, t_map) + ref.at(s, t_map)
  for index in [(0, 0, 0, 0), (7, 1, 2, 1), (8, 3, 0, 2), (15, 2, 3, 0)]:  # either side of shards
    np.testing.assert_allclose(map_grad[index], _central_difference(map_loss, s_map, index),
                               rtol=1e-3, atol=1e-4 * np.abs(map_grad).max())
  for index in [(1, 0), (9, 3), (14, 5)]:
    expected = _central_difference(lambda s: ref.rkd(s, t_features), s_features, index)
    np.testing.assert_allclose(feature_grad[index], expected, rtol=1e-3,
                               atol=1e-4 * np.abs(feature_grad).max())
