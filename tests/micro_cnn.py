"""A micro CNN for the tests whose property does not depend on the model (exact resume,
seeds in one program, a run end to end): conv-BN-ReLU, global average pool, linear.

The parameter and state kinds of the zoo's CNNs (conv kernel, BatchNorm scale, bias and
running statistics, classifier) with a fraction of resnet8's ops, so a train step, its
evaluation and a checkpoint cost a fraction of resnet8's: a KD run of tests/conftest.py's
tiny_kd_config 7.4 -> 3.4 CPU s in a fresh process (tests/README.md). `registered()` adds
it (and a two-stage one) to the model registry (kd_jax.models), so configs, saved
teachers and checkpoints name it as any model.
"""
import contextlib
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from kd_jax import checkpoint, models
from kd_jax.models import layers

NAME, WIDTH = "micro_cnn", 8
# Two stages (a second conv-BN-ReLU, stride 2, WIDTH2 wide) for the feature methods that
# pair stages after the first (e.g. VID's feats[1:]).
NAME2, WIDTH2 = "micro_cnn2", 16


class MicroCNN(nnx.Module):
  """Per stage conv (3x3, stride 2) - BN - ReLU; global average pool; fc."""

  def __init__(self, num_classes, *, rngs, dtype=jnp.float32, widths=(WIDTH,)):
    self.dtype, self.two_stages = dtype, len(widths) > 1
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = layers.conv(3, widths[0], 3, stride=2, padding=1, **kw)
    self.bn1 = layers.batch_norm(widths[0], **kw)
    if self.two_stages:
      self.conv2 = layers.conv(widths[0], widths[1], 3, stride=2, padding=1, **kw)
      self.bn2 = layers.batch_norm(widths[1], **kw)
    self.fc = layers.linear(widths[-1], num_classes, **kw)

  def __call__(self, x, train):
    x, stages, preacts = x.astype(self.dtype), [], []
    pairs = [(self.conv1, self.bn1)] + ([(self.conv2, self.bn2)] if self.two_stages else [])
    for conv, bn in pairs:
      preacts.append(bn(conv(x), use_running_average=not train))
      x = jax.nn.relu(preacts[-1])
      stages.append(x)
    return layers.classify(x, self.fc, stages, preacts)

  def bn_before_relu(self):
    """The BatchNorm before each stage's ReLU (OFD's margins), as the zoo's CNNs have."""
    return [self.bn1] + ([self.bn2] if self.two_stages else [])


@contextlib.contextmanager
def registered():
  """NAME and NAME2 in the model registry while the block runs (e.g. a module fixture)."""
  with pytest.MonkeyPatch.context() as patch:
    registry = models._REGISTRY  # pylint: disable=protected-access
    patch.setitem(registry, NAME, (MicroCNN, WIDTH))
    patch.setitem(registry, NAME2,
                  (functools.partial(MicroCNN, widths=(WIDTH, WIDTH2)), WIDTH2))
    yield


def save_teacher(path, num_classes=10, seed=7):
  """A saved micro CNN teacher (random weights) at `path`; returns `path`."""
  checkpoint.save_teacher(models.create(NAME, num_classes, rngs=nnx.Rngs(seed)), path,
                          model_name=NAME, num_classes=num_classes)
  return path


def kd_config(config, teacher_dir):
  """A copy of the KD `config` with a micro CNN student and a micro CNN teacher (random
  weights, saved to `teacher_dir`); use inside registered()."""
  config = config.copy_and_resolve_references()
  config.teacher.model = config.student.model = NAME
  config.teacher.checkpoint = save_teacher(teacher_dir)
  return config


def final_params(workdir, num_classes=10):
  """The leaves of a run's final student (a micro CNN) as saved in `workdir`."""
  return jax.tree.leaves(nnx.state(checkpoint.load_teacher(workdir, NAME, num_classes)))
