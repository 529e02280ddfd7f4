"""CRD, contrastive representation distillation (Tian et al. ICLR 2020; METHODS.md 9).

total = ce_weight CE + crd_weight [NCE(v_s; teacher bank) + NCE(v_t; student bank)]
        (+ kd_weight KD(T), 0 by default)

as mdistiller's `mdistiller/distillers/CRD.py` with RepDistiller's `crd/memory.py` and
`crd/criterion.py`, which it copies:
  * v_s = l2norm(Linear(d_s, 128)(pooled student)), v_t likewise from the (frozen)
    teacher's pooled features; both Linears train with the student (PyTorch default init).
  * Two memory banks [num_train, 128], the student's (`memory_v1`) and the teacher's
    (`memory_v2`), start as U(-s, s), s = 1/sqrt(128/3), not normalised.
  * Each example contrasts with K + 1 bank rows: its own index, then K indices of examples
    of OTHER classes (mdistiller's CIFAR sampler, mode "exact": `cls_negative[label]`,
    drawn without replacement unless K exceeds that list, as np.random.choice there;
    `replacement="always"` draws with replacement, as mdistiller's ImageNet sampler).
  * P = exp(<bank row, v> / nce_t) / Z; Z = N mean(exp(<.,.>/nce_t)) of the first batch,
    per side, then fixed (state: saved and resumed); no gradient through Z or the banks.
  * NCE(P) = -(1/B) sum_b [log(P_0 / (P_0 + K/N + eps))
                            + sum_k log((K/N) / (P_k + K/N + eps))], eps = 1e-7.
  * After the loss, the rows at the batch's indices become
    l2norm(m row + (1 - m) v) with this step's embeddings (no gradient), m = nce_m.
mdistiller's CRD distiller has no KD term (cfg.py: CE_WEIGHT 1.0, FEAT_WEIGHT 0.8, and
RepDistiller's CRD command is `-a 0 -b 0.8`); `kd_weight > 0` gives the paper's CRD+KD.

The negatives are drawn inside the step (the data pipeline stays method-agnostic) from a
key and a draw counter held in the extras, so they are deterministic, resumable and
saved in checkpoints. The frozen extra is the per-class table `cls_negative` in a compact
form: the training indices sorted by label (stable), with each class's block start and
size; row c of the table is that order with class c's block cut out (O(N), not O(C N)).
The banks are replicated like the parameters: each device gathers its examples' rows
locally and a run gives the same numbers on 1 and 8 devices.

Differences from mdistiller, none in the formula: the negatives come from a JAX key in
the step, not NumPy's global RNG in the data loader (same distribution, another stream),
and kd_jax drops the last partial batch of an epoch, whose examples' bank rows are then
not refreshed that epoch (mdistiller trains on it: 50000 = 781 x 64 + 16).
"""
import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import losses
from kd_jax.errors import UserError
from kd_jax.methods.base import Method, cross_entropy, non_negative, one_of, positive
from kd_jax.models import layers

EPS = 1e-7  # RepDistiller crd/criterion.py


class MemoryBank(nnx.Variable):
  """Embeddings of the whole training set, one row per example: updated by momentum."""


class NormalizationConstant(nnx.Variable):
  """The NCE constant Z of one side: negative until the first batch sets it."""


class SamplerState(nnx.Variable):
  """The key (raw uint32 data) and draw counter the negatives are drawn from."""


class CRDModules(nnx.Module):
  """The two embedding heads (trained), the two memory banks, Z and the sampler state."""

  def __init__(self, student_dim, teacher_dim, feat_dim, num_train, rngs):
    self.embed_student = layers.linear(student_dim, feat_dim, dtype=jnp.float32, rngs=rngs)
    self.embed_teacher = layers.linear(teacher_dim, feat_dim, dtype=jnp.float32, rngs=rngs)
    bound = 1.0 / math.sqrt(feat_dim / 3)  # ContrastMemory: rand * 2 stdv - stdv
    uniform = lambda: jax.random.uniform(rngs.params(), (num_train, feat_dim), jnp.float32,
                                         -bound, bound)
    self.memory_student = MemoryBank(uniform())  # memory_v1
    self.memory_teacher = MemoryBank(uniform())  # memory_v2
    self.z_student = NormalizationConstant(jnp.asarray(-1.0, jnp.float32))  # Z_v1
    self.z_teacher = NormalizationConstant(jnp.asarray(-1.0, jnp.float32))  # Z_v2
    self.sampler_key = SamplerState(jax.random.key_data(rngs.params()))
    self.draws = SamplerState(jnp.zeros((), jnp.int32))

  def embed(self, student_features, teacher_features):
    """(v_s, v_t): Linear then L2 normalisation (Embed + Normalize, no eps), float32."""
    l2norm = lambda x: x / jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return (l2norm(self.embed_student(student_features.astype(jnp.float32))),
            l2norm(self.embed_teacher(teacher_features.astype(jnp.float32))))

  def next_key(self):
    """A fresh key for this step's draws; advances the counter (state)."""
    count = self.draws[...]
    self.draws[...] = count + 1
    return jax.random.fold_in(jax.random.wrap_key_data(self.sampler_key[...]), count)


def negatives_table(train_labels, num_classes):
  """The frozen extra: `cls_negative` of every class in compact form (module docstring)."""
  labels = np.asarray(train_labels, np.int64)
  count = np.bincount(labels, minlength=num_classes)
  return {"order": jnp.asarray(np.argsort(labels, kind="stable"), jnp.int32),
          "class_start": jnp.asarray(np.cumsum(count) - count, jnp.int32),
          "class_count": jnp.asarray(count, jnp.int32)}


def contrast_indices(key, index, labels, table, k, always_replace=False):
  """int32 [B, k + 1]: each example's own index, then k indices of other-class examples.

  As mdistiller's CIFAR100InstanceSample ("exact"): k draws from `cls_negative[label]`,
  with replacement only when k exceeds its length, else a uniformly random k-subset
  (a sort of B x num_train random keys per step); `always_replace`: always with
  replacement, as its ImageNetInstanceSample.
  """
  order, start, count = table["order"], table["class_start"], table["class_count"]
  num_train = order.shape[0]
  start, count = start[labels][:, None], count[labels][:, None]
  others = num_train - count  # [B, 1]: the length of the example's cls_negative row
  key_with, key_without = jax.random.split(key)
  # With replacement: entry j of the row is order[j], or order[j + count] past the block.
  j = jax.random.randint(key_with, (index.shape[0], k), 0, others)
  negatives = order[jnp.where(j < start, j, j + count)]
  if k <= num_train and not always_replace:  # k > num_train: no row is long enough
    # Without replacement: the k smallest of random keys over the positions of `order`,
    # the own class's block keyed above every other position (31-bit keys < 2^32 - 1).
    positions = jnp.arange(num_train)[None, :]
    own = (positions >= start) & (positions < start + count)
    keys = jax.random.bits(key_without, (index.shape[0], num_train), jnp.uint32) >> 1
    keys = jnp.where(own, jnp.uint32(0xFFFFFFFF), keys)
    subset = order[jnp.argsort(keys, axis=1)[:, :k]]
    negatives = jnp.where(k > others, negatives, subset)
  return jnp.concatenate([index[:, None], negatives], axis=1).astype(jnp.int32)


def contrast_loss(scores, num_data):
  """RepDistiller's ContrastLoss (Eq. 18) on normalised scores P [B, K + 1]."""
  scores = scores.astype(jnp.float32)
  noise = (scores.shape[1] - 1) / num_data  # m Pn
  log_positive = jnp.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
  log_negative = jnp.log(noise / (scores[:, 1:] + noise + EPS))
  return -(jnp.sum(log_positive) + jnp.sum(log_negative)) / scores.shape[0]


def crd_nce(student_embed, teacher_embed, student_bank, teacher_bank, contrast_index,
            z_student, z_teacher, temperature):
  """(NCE_s + NCE_t, Z_s, Z_t): ContrastMemory.forward's scores and CRDLoss's sum.

  The student embedding is scored against the teacher bank's rows (out_v1) and the
  teacher embedding against the student bank's (out_v2); a negative Z is set from this
  batch (N mean of the unnormalised scores), without gradient, as the reference's .item().
  """
  num_data = student_bank.shape[0]
  teacher_rows = jax.lax.stop_gradient(teacher_bank[contrast_index])  # [B, K+1, d]
  student_rows = jax.lax.stop_gradient(student_bank[contrast_index])
  out_student = jnp.exp(jnp.einsum("bkd,bd->bk", teacher_rows, student_embed) / temperature)
  out_teacher = jnp.exp(jnp.einsum("bkd,bd->bk", student_rows, teacher_embed) / temperature)
  first = lambda z, out: jnp.where(z < 0, jax.lax.stop_gradient(jnp.mean(out)) * num_data, z)
  z_student, z_teacher = first(z_student, out_student), first(z_teacher, out_teacher)
  value = (contrast_loss(out_student / z_student, num_data)
           + contrast_loss(out_teacher / z_teacher, num_data))
  return value, z_student, z_teacher


def momentum_update(bank, index, embed, momentum):
  """Rows `index` <- l2norm(momentum row + (1 - momentum) embed); no gradient."""
  rows = bank[index] * momentum + jax.lax.stop_gradient(embed) * (1 - momentum)
  rows = rows / jnp.sqrt(jnp.sum(rows * rows, axis=1, keepdims=True))
  return bank.at[index].set(rows)


@dataclasses.dataclass(frozen=True)
class CRD(Method):
  """CRD (module docstring); field names follow mdistiller's cfg / RepDistiller's flags."""
  ce_weight: float = non_negative(1.0)
  crd_weight: float = non_negative(0.8)  # CRD.LOSS.FEAT_WEIGHT
  kd_weight: float = non_negative(0.0)  # RepDistiller -a: 0 for CRD, 1 for CRD+KD
  temperature: float = positive(4.0)  # of the KD term only
  feat_dim: int = positive(128)  # CRD.FEAT.DIM
  nce_k: int = positive(16384)  # CRD.NCE.K: negatives per example
  nce_t: float = positive(0.07)  # CRD.NCE.TEMPERATURE
  nce_m: float = non_negative(0.5)  # CRD.NCE.MOMENTUM of the memory banks
  # Negatives with replacement only when K exceeds cls_negative (mdistiller's CIFAR
  # sampler) or always (its ImageNet sampler; no per-step sort over the training set).
  replacement: str = one_of("if_needed", ("if_needed", "always"))

  def __post_init__(self):
    super().__post_init__()
    if not self.nce_m < 1:
      raise UserError(f"config.method.nce_m={self.nce_m!r} must be in [0, 1)")

  def extras(self, setup):
    widths = [setup.feature_shapes(model)["pooled"].shape[-1]
              for model in (setup.student, setup.teacher)]
    return CRDModules(*widths, self.feat_dim, setup.feeder.info.num_train, setup.rngs)

  def frozen(self, setup):
    labels = setup.feeder.train_labels()
    if len(labels) != setup.feeder.info.num_train:
      raise ValueError(f"{len(labels)} training labels for {setup.feeder.info.num_train} examples")
    return negatives_table(labels, setup.feeder.info.num_classes)

  def loss(self, student, teacher, labels, epoch, aux):
    modules = aux.extras
    student_embed, teacher_embed = modules.embed(student.features["pooled"],
                                                 teacher.features["pooled"])
    contrast_index = contrast_indices(modules.next_key(), aux.index, labels, aux.frozen,
                                      self.nce_k, self.replacement == "always")
    student_bank, teacher_bank = modules.memory_student[...], modules.memory_teacher[...]
    value, z_student, z_teacher = crd_nce(
        student_embed, teacher_embed, student_bank, teacher_bank, contrast_index,
        modules.z_student[...], modules.z_teacher[...], self.nce_t)
    modules.z_student[...], modules.z_teacher[...] = z_student, z_teacher
    modules.memory_student[...] = momentum_update(student_bank, aux.index, student_embed,
                                                  self.nce_m)
    modules.memory_teacher[...] = momentum_update(teacher_bank, aux.index, teacher_embed,
                                                  self.nce_m)
    terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels),
             "crd": self.crd_weight * value}
    if self.kd_weight:
      terms["kd"] = self.kd_weight * losses.kd(student.logits, teacher.logits, self.temperature)
    return sum(terms.values()), terms

  def describe_extras(self, student_dim, teacher_dim):
    return {
        "embed": f"Linear({student_dim} -> {self.feat_dim}) student, Linear({teacher_dim} -> "
                 f"{self.feat_dim}) teacher, each + L2 norm; not saved with the student",
        "memory": f"2 banks [num_train, {self.feat_dim}] (student, teacher), momentum "
                  f"{self.nce_m:g}; {self.nce_k} negatives per example from other classes; "
                  "Z set by the first batch",
    }

  def formula(self):
    kd = f" + {self.kd_weight:g} KD(T={self.temperature:g})" if self.kd_weight else ""
    return (f"{self.ce_weight:g} CE + {self.crd_weight:g} CRD(K={self.nce_k}, "
            f"T={self.nce_t:g}){kd}")
