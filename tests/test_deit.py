"""DeiT and DeiT++ (METHODS.md 11).

The losses against NumPy transcriptions of the ND authors' DeiT code (ImageNet/DeiT/
utils.py `KDLoss` (hard), `DirectNormLoss.project_center_v2`; Dataset/data.py
`mixup_target`, `mixup_center`; timm's `SoftTargetCrossEntropy`), the totals by hand,
the config validation of the batch augmentation, the recipe card, and runs through
main.py (slow).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import imagenet_deit
from kd_jax import losses, methods, validate
from kd_jax.data import batch_augment, mixing
from kd_jax.errors import UserError
from kd_jax.methods import Aux, ModelOutput
from kd_jax.tools import recipe
from tests.loss_reference import central_differences

RNG = np.random.default_rng(0)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _soft_ce(logits, targets):  # timm SoftTargetCrossEntropy
  return np.mean(np.sum(-targets * _log_softmax(logits), -1))


def _hard_kd(student, teacher):  # F.cross_entropy(s_out, t_out.argmax(dim=1))
  return -np.mean(_log_softmax(student)[np.arange(len(student)), teacher.argmax(1)])


def _project_center_v2(s_emb, t_emb, centers):  # DirectNormLoss, divided by the batch
  loss = 0.0
  for s, t, c in zip(s_emb, t_emb, centers):
    e_c = c / np.linalg.norm(c)
    loss += 1 - np.dot(s, e_c) / max(np.linalg.norm(s), np.linalg.norm(t))
  return loss / len(s_emb)


def _mixup_target(labels, num_classes, lam, smoothing):
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  y1 = np.full((len(labels), num_classes), off)
  y1[np.arange(len(labels)), labels] = on
  return y1 * lam + y1[::-1] * (1.0 - lam)


def _mixup_center(labels, class_means, num_classes, lam, smoothing):
  center = class_means[labels]
  off = smoothing / num_classes
  sm = np.full((len(labels), len(labels)), off)
  np.fill_diagonal(sm, 1.0 - smoothing + off)
  c1 = sm @ center
  return c1 * lam + c1[::-1] * (1.0 - lam)


def _authors_deit_pp(cls_logits, dist_logits, s_emb, t_emb, t_logits, labels, class_means,
                     lam, smoothing, epoch, groups):
  """Their train() loss on each GPU's share (a group), averaged as DDP averages gradients."""
  num_classes = cls_logits.shape[-1]
  total = 0.0
  for g, lam_g in zip(np.split(np.arange(len(labels)), groups), lam):
    targets = _mixup_target(labels[g], num_classes, lam_g, smoothing)
    centers = _mixup_center(labels[g], class_means, num_classes, lam_g, smoothing)
    total += (_soft_ce(cls_logits[g], targets)
              + _hard_kd(dist_logits[g], t_logits[g]) * 0.5 * min(1.0, epoch / 5.0)
              + _project_center_v2(s_emb[g], t_emb[g], centers) * 1.5)
  return total / groups


def test_losses_match_the_authors_formulas():
  s, t = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
  targets = RNG.dirichlet(np.ones(5), size=6)
  np.testing.assert_allclose(losses.hard_distillation(jnp.asarray(s), jnp.asarray(t)),
                             _hard_kd(s, t), rtol=1e-5)
  np.testing.assert_allclose(losses.soft_target_cross_entropy(jnp.asarray(s), jnp.asarray(targets)),
                             _soft_ce(s, targets), rtol=1e-5)
  fs, ft, centers = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
  np.testing.assert_allclose(losses.nd_to_centers(fs, ft, centers),
                             _project_center_v2(fs, ft, centers), rtol=1e-5)
  means, labels = RNG.normal(size=(3, 4)), np.array([0, 2, 2, 1, 0, 1])
  np.testing.assert_allclose(losses.nd_to_centers(fs, ft, means[labels]),
                             losses.nd(fs, ft, means, labels), rtol=1e-6)


def test_no_gradient_reaches_the_teacher_or_the_targets():
  s, t = jnp.asarray(RNG.normal(size=(4, 5))), jnp.asarray(RNG.normal(size=(4, 5)))
  grad_t = jax.grad(lambda t: losses.hard_distillation(s, t) + losses.soft_target_cross_entropy(
      s, jax.nn.softmax(t)))(t)
  assert not np.any(np.asarray(grad_t))


def _outputs(batch=8, classes=5, student_dim=4, teacher_dim=4):
  cls_logits, dist_logits = RNG.normal(size=(2, batch, classes))
  pooled = RNG.normal(size=(batch, student_dim))
  student = ModelOutput(jnp.asarray((cls_logits + dist_logits) / 2),
                        {"pooled": jnp.asarray(pooled), "cls_logits": jnp.asarray(cls_logits),
                         "dist_logits": jnp.asarray(dist_logits)})
  teacher = ModelOutput(jnp.asarray(RNG.normal(size=(batch, classes))),
                        {"pooled": jnp.asarray(RNG.normal(size=(batch, teacher_dim)))})
  return student, teacher


@pytest.mark.parametrize("epoch", [0, 2, 7])
@pytest.mark.parametrize("groups", [1, 2])
def test_deit_pp_is_the_authors_loss_on_a_mixed_batch(epoch, groups):
  student, teacher = _outputs()
  labels = RNG.integers(0, 5, size=8)
  class_means = RNG.normal(size=(5, 4))
  lam = RNG.uniform(size=groups)
  mixed = mixing.Mixed(labels=jnp.asarray(labels, jnp.int32),
                       lam=jnp.asarray(np.repeat(lam, 8 // groups), jnp.float32),
                       smoothing=0.1, group_size=8 // groups)
  method = methods.create(imagenet_deit.get_config("deit_nd,regnety160_deitb").method)
  total, terms = method.loss(student, teacher, mixed, jnp.asarray(epoch),
                             Aux(frozen={"class_means": jnp.asarray(class_means, jnp.float32)}))
  expected = _authors_deit_pp(*(np.asarray(a, np.float64) for a in (
      student.features["cls_logits"], student.features["dist_logits"],
      student.features["pooled"], teacher.features["pooled"], teacher.logits)),
      labels, class_means, lam, 0.1, epoch, groups)
  np.testing.assert_allclose(total, expected, rtol=2e-5)
  assert set(terms) >= {"ce", "kd", "nd"}
  assert float(terms["kd"]) == (0.0 if epoch == 0 else pytest.approx(
      0.5 * min(1.0, epoch / 5) * _hard_kd(np.asarray(student.features["dist_logits"]),
                                           np.asarray(teacher.logits)), rel=1e-5))


def test_deit_pp_gradients_are_the_authors_loss_gradients():
  """d total / d (class logits, distillation logits, embedding) against central differences
  of the NumPy transcription of their loss, on a mixed batch of two groups at epoch 2."""
  student, teacher = _outputs()
  labels = RNG.integers(0, 5, size=8)
  class_means = RNG.normal(size=(5, 4))
  lam = np.array([0.3, 0.8])
  mixed = mixing.Mixed(labels=jnp.asarray(labels, jnp.int32),
                       lam=jnp.asarray(np.repeat(lam, 4), jnp.float32), smoothing=0.1,
                       group_size=4)
  method = methods.create(imagenet_deit.get_config("deit_nd,regnety160_deitb").method)
  aux = Aux(frozen={"class_means": jnp.asarray(class_means, jnp.float32)})
  inputs = {k: np.asarray(student.features[k], np.float64)
            for k in ("cls_logits", "dist_logits", "pooled")}
  t_emb, t_logits = (np.asarray(a, np.float64) for a in (teacher.features["pooled"],
                                                          teacher.logits))

  def total(cls_logits, dist_logits, pooled):
    out = ModelOutput((cls_logits + dist_logits) / 2, {"pooled": pooled, "cls_logits": cls_logits,
                                                       "dist_logits": dist_logits})
    return method.loss(out, teacher, mixed, jnp.asarray(2), aux)[0]

  grads = jax.grad(total, argnums=(0, 1, 2))(*(jnp.asarray(v, jnp.float32)
                                               for v in inputs.values()))
  for i, name in enumerate(inputs):
    def reference(x, name=name):
      values = dict(inputs, **{name: x})
      return _authors_deit_pp(values["cls_logits"], values["dist_logits"], values["pooled"],
                              t_emb, t_logits, labels, class_means, lam, 0.1, 2, 2)
    np.testing.assert_allclose(grads[i], central_differences(reference, inputs[name]),
                               rtol=1e-3, atol=1e-6, err_msg=name)


def test_deit_by_hand_on_int_labels():
  """DeiT's paper weights (the dataclass defaults): 0.5 CE(class head) + 0.5 hard KD."""
  student, teacher = _outputs()
  labels = RNG.integers(0, 5, size=8)
  total, _ = methods.create({"name": "deit"}).loss(student, teacher, jnp.asarray(labels),
                                                   jnp.asarray(0), Aux())
  cls_logits = np.asarray(student.features["cls_logits"], np.float64)
  expected = (0.5 * -np.mean(_log_softmax(cls_logits)[np.arange(8), labels])
              + 0.5 * _hard_kd(np.asarray(student.features["dist_logits"], np.float64),
                               np.asarray(teacher.logits, np.float64)))
  np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_deit_needs_a_distilled_student():
  student, teacher = _outputs()
  plain = ModelOutput(student.logits, {"pooled": student.features["pooled"]})
  with pytest.raises(UserError, match="distillation token"):
    methods.create({"name": "deit"}).loss(plain, teacher, jnp.zeros(8, jnp.int32), 0, Aux())
  config = imagenet_deit.get_config("deit_nd,smoke")  # refused when the config is checked
  config.student.model, config.student.drop_path_rate = "imagenet_resnet18", 0.0
  with pytest.raises(UserError, match="student must be a distilled DeiT .*not imagenet_resnet18"):
    validate.check(config)


@pytest.mark.parametrize("change,message", [
    (dict(method="kd"), "takes int labels"),
    (dict(mix_group_size=12), "must be even and divide"),
    (dict(erase_prob=1.5), "erase_prob=1.5 must be in"),
    (dict(smoothing=1.0), "smoothing=1.0 must be in"),
])
def test_batch_augment_settings_are_checked(change, message):
  config = imagenet_deit.get_config("deit_nd,smoke")
  if "method" in change:
    config.method = methods.defaults("kd")
  else:
    config.augment.update(change)
  with pytest.raises(UserError, match=message):
    validate.check(config)


def test_the_recipe_card_is_the_authors_run():
  card = dict(recipe.card(imagenet_deit.get_config("deit_nd,regnety160_deitb")))
  assert card["optimizer"] == ("AdamW betas (0.9, 0.95), eps 1e-08, weight decay 0.3 on "
                               "matrices (not biases or other 1-D parameters)")
  assert card["lr"] == ("0.0008 (batch 2048), linear warm-up from 0 over 20 epochs, then "
                        "cosine to 1e-06, per step")
  assert card["loss"].startswith("1 CE(class head) + min(1, e/5) 0.5 CE(distillation head, "
                                 "teacher argmax) + 1.5 ND")
  assert card["head"].startswith("BatchNorm1d -> Dropout(0.5) -> Linear(768 -> 3024), "
                                 "init normal_0.01")
  assert "mixup 0.8 / cutmix 1 (switch 0.5, p 1, within groups of 256)" in card["augmentation"]
  assert card["published"].startswith("DeiT++ 83.60 (ND authors' README")
  # DeiT's code trains under AMP: bfloat16 compute by default (configs/imagenet_deit.py)
  assert "bfloat16 compute, float32 parameters and normalisation" in card["student"]
  assert "bfloat16 compute, float32 parameters and normalisation" in card["teacher"]
  assert dict(recipe.card(imagenet_deit.get_config("deit,regnety160_deitb")))[
      "published"].startswith("DeiT 83.40 (DeiT paper's DeiT-B distilled, trained by DeiT's own")


def test_batch_augment_off_by_default_everywhere_else():
  from configs import cifar_kd, imagenet_nd  # pylint: disable=g-import-not-at-top
  for config in (cifar_kd.get_config("smoke"), imagenet_nd.get_config("kd_nd,res34_res18")):
    assert not batch_augment.BatchAugment.from_config(config).active


def _micro_config(tmp_path, arg="deit_nd,smoke"):
  """The smoke config on 16 synthetic 64 px images with a saved tiny ViT teacher."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint, models  # pylint: disable=g-import-not-at-top
  teacher_dir = str(tmp_path / "teacher")
  checkpoint.save_teacher(models.create("vit_micro_patch16_64", 1000, rngs=nnx.Rngs(1)),
                          teacher_dir, model_name="vit_micro_patch16_64", num_classes=1000)
  config = imagenet_deit.get_config(arg)
  config.teacher.model, config.teacher.checkpoint = "vit_micro_patch16_64", teacher_dir
  config.data.update(dict(synthetic_train_size=16, synthetic_test_size=8, num_threads=1))
  config.batch_size, config.eval_batch_size, config.log_every_steps = 8, 8, 1
  config.augment.mix_group_size = 4
  return config


def test_a_mixed_batch_trains_through_the_step(tmp_path):
  """Erasing + mixup/cutmix in the step, Mixed labels into DeiT++, AdamW, drop-path."""
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  from kd_jax.metrics import read_metrics  # pylint: disable=g-import-not-at-top
  config = _micro_config(tmp_path)
  config.num_epochs, config.optim.warmup_epochs = 1, 0.5
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.finished and np.isfinite(result.last_top1)
  records = read_metrics(str(tmp_path / "run"), "train")
  assert [r["step"] for r in records] == [1, 2]
  assert all({"ce", "kd", "nd", "student_norm"} <= r.keys() for r in records)
  assert records[0]["lr"] == 0.0 and records[1]["lr"] > 0  # warm-up from 0, per step


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["deit_nd,smoke", "deit,smoke"])
def test_stop_and_resume_is_bit_identical_with_mixing(arg, tmp_path):
  """Erasing and mixing draw from (seed, step): a resumed run repeats them exactly."""
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  config = _micro_config(tmp_path, arg)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train.train_and_evaluate(config, straight).finished
  assert train.train_and_evaluate(config, resumed, max_steps=3).stopped_at == 3
  assert train.train_and_evaluate(config, resumed).finished
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint  # pylint: disable=g-import-not-at-top
  a, b = (checkpoint.load_teacher(run, config.student.model, 1000) for run in (straight, resumed))
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["deit_nd,smoke", "deit,smoke"])
def test_smoke_configs_train_under_mock_imagenet(arg, tmp_path):
  """The smoke variants through tfds.testing.mock_data's grain pipeline (RandAugment,
  bicubic), with the ResNet-18 teacher trained first as a smoke run does."""
  pytest.importorskip("tensorflow_datasets")
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = imagenet_deit.get_config(arg)
  config.data.update(dict(source="tfds", num_threads=1))
  with tfds.testing.mock_data(num_examples=64):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.finished and np.isfinite(result.last_top1)
  assert result.teacher_top1 is not None
