"""One evaluation path: per-batch sums over valid (mask = 1) examples, added on device.

Every pass over data that is not a training step goes through here: the test-set
evaluation of the loop and of `tools/evaluate`, and a method's pass over the training
split (ND's teacher class means). Padded batches keep one shape per pass (one
compilation); the mask counts each example exactly once, on any number of devices.
"""
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from kd_jax.data import augment
from kd_jax.detection import evaluation as detection_evaluation


def batch_sums(feeder, sums_fn):
  """jit(variables, batch) -> sums_fn(variables, images, labels, mask) on this feeder's
  pass batches (uint8 images, int labels, float mask)."""
  return jax.jit(lambda variables, batch: sums_fn(variables, *feeder.pass_inputs(batch)))


def total(batch_sums_fn, variables, batches):
  """The sums of `batch_sums_fn` over `batches`, added on device, fetched once."""
  sums = None
  for batch in batches:
    batch_sums_ = batch_sums_fn(variables, batch)
    sums = batch_sums_ if sums is None else jax.tree.map(jnp.add, sums, batch_sums_)
  return jax.device_get(sums)


def classification_sums(logits, labels, mask):
  """Sums of correct top-1 / top-5 and of CE over the valid samples, and their count."""
  logits = logits.astype(jnp.float32)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {"top1": jnp.sum(mask * (top5[:, 0] == labels)),
          "top5": jnp.sum(mask * jnp.any(top5 == labels[:, None], axis=-1)),
          "ce": jnp.sum(mask * ce), "count": jnp.sum(mask)}


def as_percent(sums):
  """Top-1 / top-5 (%) and mean CE from `classification_sums` totals."""
  count = float(sums["count"])
  return {"top1": 100 * float(sums["top1"]) / count, "top5": 100 * float(sums["top5"]) / count,
          "ce": float(sums["ce"]) / count}


class Evaluator:
  """Top-1 / top-5 (%) and CE of one model graph over the feeder's test split.

  `over_seeds` (kd_jax.seeds): a function that maps one model's sums function to one over
  variables with a leading seed axis; the result is then a list, one dict per seed, and
  each batch is read once for all of them.
  """

  def __init__(self, feeder, graphdef, over_seeds=None):
    mean = jnp.asarray(feeder.info.mean, jnp.float32)
    std = jnp.asarray(feeder.info.std, jnp.float32)

    def sums(variables, images, labels, mask):
      model = nnx.merge(graphdef, *variables)
      logits, _ = model(augment.normalize(images, mean, std), train=False)
      return classification_sums(logits, labels, mask)

    if over_seeds is not None:
      sums = over_seeds(sums)
    self.feeder, self.batch_sums, self.over_seeds = feeder, batch_sums(feeder, sums), over_seeds

  def __call__(self, *variables, output_dir=None):
    """`variables`: the nnx states that nnx.merge(graphdef, ...) takes. (`output_dir`:
    where an evaluator keeps its files; classification writes none.)"""
    del output_dir
    sums = total(self.batch_sums, variables, self.feeder.eval_batches())
    if self.over_seeds:
      return [as_percent(jax.tree.map(lambda x, i=i: x[i], sums))
              for i in range(len(sums["count"]))]
    return as_percent(sums)


def create(feeder, graphdef):
  """The evaluator of the feeder's task: top-1 / top-5 here, COCO box AP for detection
  (kd_jax.detection.evaluation)."""
  if getattr(feeder.info, "metric", "top1") == "AP":
    return detection_evaluation.DetectionEvaluator(feeder, graphdef)
  return Evaluator(feeder, graphdef)


def describe(results):
  """The log line's part for one evaluation's results."""
  if "top1" in results:
    return f"top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%"
  return "  ".join(f"{name} {results[name]:.2f}" for name in ("AP", "AP50", "AP75"))
