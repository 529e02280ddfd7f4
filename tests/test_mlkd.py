"""MLKD against a PyTorch transcription of its authors' forward, values and gradients.

`_authors_losses` follows Jin-Ying/Multi-Level-Logit-Distillation
`mdistiller/distillers/KD_ours.py` (`KD_ours.forward_train`, from the logits on) line by
line, with the `normalize` of sunshangquan/logit-standardization-KD `MLKD.py` for
`--logit-stand`; the trainer sums `l.mean()` over the returned dict. Written from their
code, not from kd_jax.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax import losses, methods
from kd_jax.methods import Aux, ModelOutput
from tests import loss_reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

B, C = 16, 10
RNG = np.random.default_rng(11)
LOGITS = [RNG.normal(size=(B, C)).astype(np.float32) * 3 for _ in range(4)]  # sw, ss, tw, ts
LABELS = RNG.integers(0, C, B)


def _normalize(logit):
  mean = logit.mean(dim=-1, keepdims=True)
  stdv = logit.std(dim=-1, keepdims=True)
  return (logit - mean) / (1e-7 + stdv)


def _kd_loss(logits_student, logits_teacher, temperature, logit_stand):
  logits_student = _normalize(logits_student) if logit_stand else logits_student
  logits_teacher = _normalize(logits_teacher) if logit_stand else logits_teacher
  log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
  return loss_kd * temperature**2


def _cc_loss(logits_student, logits_teacher, temperature):
  class_num = logits_teacher.shape[1]
  pred_student = F.softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
  teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
  return ((teacher_matrix - student_matrix) ** 2).sum() / class_num


def _bc_loss(logits_student, logits_teacher, temperature):
  batch_size = logits_teacher.shape[0]
  pred_student = F.softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
  teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
  return ((teacher_matrix - student_matrix) ** 2).sum() / batch_size


def _authors_losses(sw, ss, tw, ts, target, temperature, ce_w, kd_w, logit_stand):
  pred_teacher_weak = F.softmax(tw.detach(), dim=1)
  confidence, _ = pred_teacher_weak.max(dim=1)
  mask = confidence.le(np.percentile(confidence.numpy().flatten(), 50)).bool()
  class_confidence = torch.sum(pred_teacher_weak, dim=0)
  class_conf_mask = class_confidence.le(
      np.percentile(class_confidence.numpy().flatten(), 50)).bool()
  kd = lambda s, t, temp: _kd_loss(s, t, temp, logit_stand)
  temps = (temperature, 3.0, 5.0, 2.0, 6.0)
  loss_ce = ce_w * (F.cross_entropy(sw, target) + F.cross_entropy(ss, target))
  loss_kd_weak = sum(kd_w * ((kd(sw, tw, t) * mask).mean()) for t in temps)
  loss_kd_strong = (kd_w * kd(ss, ts, temperature) + kd_w * kd(ss, ts, 3.0)
                    + kd_w * kd(ss, ts, 5.0) + kd_w * kd(sw, tw, 2.0) + kd_w * kd(sw, tw, 6.0))
  loss_cc_weak = sum(kd_w * ((_cc_loss(sw, tw, t) * class_conf_mask).mean()) for t in temps)
  loss_bc_weak = sum(kd_w * ((_bc_loss(sw, tw, t) * mask).mean()) for t in temps)
  return {"loss_ce": loss_ce, "loss_kd": loss_kd_weak + loss_kd_strong,
          "loss_cc": loss_cc_weak, "loss_bc": loss_bc_weak}


def _kd_jax(method, sw, ss):
  tw, ts = (ModelOutput(jnp.asarray(x), {}) for x in LOGITS[2:])
  student = (ModelOutput(sw, {}), ModelOutput(ss, {}))
  return method.loss(student, (tw, ts), jnp.asarray(LABELS), jnp.asarray(0), Aux())


@pytest.mark.parametrize("temperature,ce_w,kd_w,standardize", [
    (4.0, 0.1, 0.9, False),  # MLKD's recipe (mdistiller's KD defaults)
    (2.0, 0.1, 6.0, True),  # MLKD+LS as the LS runs of vgg13 -> vgg8
])
def test_total_terms_and_gradients_match_the_authors_forward(temperature, ce_w, kd_w, standardize):
  method = methods.create(ml_collections.ConfigDict(methods.defaults(
      "mlkd", temperature=temperature, ce_weight=ce_w, kd_weight=kd_w, standardize=standardize)))
  (total, metrics), grads = jax.jit(jax.value_and_grad(
      lambda sw, ss: _kd_jax(method, sw, ss), argnums=(0, 1), has_aux=True))(
          jnp.asarray(LOGITS[0]), jnp.asarray(LOGITS[1]))

  sw, ss, tw, ts = (torch.tensor(x, dtype=torch.float64) for x in LOGITS)
  sw.requires_grad_(True)
  ss.requires_grad_(True)
  reference = _authors_losses(sw, ss, tw, ts, torch.tensor(LABELS), temperature, ce_w, kd_w,
                              standardize)
  expected_total = sum(value.mean() for value in reference.values())
  expected_total.backward()
  reference = {name: float(value.detach()) for name, value in reference.items()}

  np.testing.assert_allclose(float(total), float(expected_total.detach()), rtol=2e-5)
  pairs = {"loss_ce": metrics["ce"], "loss_kd": metrics["kd_weak"] + metrics["kd_strong"],
           "loss_cc": metrics["cc_weak"], "loss_bc": metrics["bc_weak"]}
  for name, value in pairs.items():
    np.testing.assert_allclose(float(value), reference[name], rtol=2e-5, atol=1e-9,
                               err_msg=name)
  for mine, theirs in zip(grads, (sw.grad, ss.grad)):
    np.testing.assert_allclose(np.asarray(mine), theirs.numpy(), rtol=1e-4, atol=1e-7)


def test_consistency_losses_on_8_sharded_devices_see_the_global_batch():
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  student, teacher = LOGITS[0], LOGITS[2]
  s, t = (jax.device_put(x, sharded) for x in (student, teacher))
  both = jax.jit(lambda s, t: (losses.class_consistency(s, t, 3.0),
                               losses.batch_consistency(s, t, 3.0)))(s, t)
  np.testing.assert_allclose(both[0], ref.consistency(student, teacher, 3.0, True), rtol=1e-5)
  np.testing.assert_allclose(both[1], ref.consistency(student, teacher, 3.0, False), rtol=1e-5)
