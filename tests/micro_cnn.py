"""A micro CNN for the tests whose property does not depend on the model (exact resume,
seeds in one program, a run end to end): conv-BN-ReLU, global average pool, linear.

The parameter and state kinds of the zoo's CNNs (conv kernel, BatchNorm scale, bias and
running statistics, classifier) with a fraction of resnet8's ops, so a train step, its
evaluation and a checkpoint cost a fraction of resnet8's: a KD run of tests/conftest.py's
tiny_kd_config 7.4 -> 3.4 CPU s in a fresh process (tests/README.md).
`registered()` adds it to the model registry (kd_jax.models), so configs, teachers and
checkpoints name it as any model.
"""
import contextlib

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from kd_jax import checkpoint, models
from kd_jax.models import layers

NAME, WIDTH = "micro_cnn", 8


class MicroCNN(nnx.Module):
  """conv1 (3x3, stride 2) - bn1 - ReLU - global average pool - fc."""

  def __init__(self, num_classes, *, rngs, dtype=jnp.float32):
    self.dtype = dtype
    self.conv1 = layers.conv(3, WIDTH, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)
    self.bn1 = layers.batch_norm(WIDTH, dtype=dtype, rngs=rngs)
    self.fc = layers.linear(WIDTH, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, train):
    preact = self.bn1(self.conv1(x.astype(self.dtype)), use_running_average=not train)
    x = jax.nn.relu(preact)
    return layers.classify(x, self.fc, (x,), (preact,))


@contextlib.contextmanager
def registered():
  """NAME in the model registry while the block runs (e.g. a module-scoped fixture)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models._REGISTRY, NAME, (MicroCNN, WIDTH))  # pylint: disable=protected-access
    yield


def save_teacher(path, num_classes=10, seed=7):
  """A saved micro CNN teacher (random weights) at `path`; returns `path`."""
  checkpoint.save_teacher(models.create(NAME, num_classes, rngs=nnx.Rngs(seed)), path,
                          model_name=NAME, num_classes=num_classes)
  return path


def final_params(workdir, num_classes=10):
  """The leaves of a run's final student (a micro CNN) as saved in `workdir`."""
  return jax.tree.leaves(nnx.state(checkpoint.load_teacher(workdir, NAME, num_classes)))
