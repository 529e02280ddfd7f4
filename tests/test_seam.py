"""The seam between data, step and method: feeders hand the step dataset indices, a
method's extras may hold mutable state that the loss updates in place (saved, resumed
and sharded like the parameters), and the loop knows no dataset or method by name."""
import dataclasses
import os
import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar_ce
from kd_jax import data, methods, train
from kd_jax.data import batching, feeders
from kd_jax.methods.base import Method, Setup, cross_entropy
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, BATCH = 64, 16


@pytest.fixture(scope="module")
def dataset():
  return data.load("cifar10", "synthetic", synthetic_train_size=NUM_TRAIN, synthetic_test_size=16)


@pytest.fixture(scope="module", autouse=True)
def micro():
  """The micro CNN (tests/micro_cnn.py) in the model registry for this module."""
  with micro_cnn.registered():
    yield


@pytest.fixture()
def config():
  """cifar_ce's smoke config on a micro CNN student: the seam is under test, not the model,
  and its runs compile a fraction of resnet8's program (tests/micro_cnn.py)."""
  config = cifar_ce.get_config("smoke")
  config.student.model = micro_cnn.NAME
  config.data.synthetic_train_size, config.data.synthetic_test_size = NUM_TRAIN, 16
  config.batch_size, config.num_epochs = BATCH, 2
  config.eval_batch_size, config.log_every_steps = 16, 2
  return config


def test_device_feeder_batches_carry_dataset_indices(dataset, config):
  """An epoch's indices are a permutation of the training set, each with its label."""
  feeder = feeders.DeviceFeeder(dataset, config, train.data_mesh())
  method = methods.create(config.method)
  inputs = jax.jit(lambda batch, step: feeder.train_inputs(batch, step, method)[1:])
  assert feeder.steps_per_epoch == NUM_TRAIN // BATCH == 4
  for epoch in (0, 1):
    batch = next(feeder.train_batches(epoch))
    labels, index = zip(*(jax.device_get(inputs(batch, jnp.int32(step)))
                          for step in range(epoch * 4, epoch * 4 + 4)))
    index, labels = np.concatenate(index), np.concatenate(labels)
    assert sorted(index.tolist()) == list(range(NUM_TRAIN))
    np.testing.assert_array_equal(labels, np.asarray(dataset.train_labels)[index])
  assert not np.array_equal(index, np.arange(NUM_TRAIN))  # shuffled


class Seen(nnx.Variable):
  """How often each training example has been in a batch: state, not a parameter."""


class Counter(nnx.Module):

  def __init__(self, num_train):
    self.seen = Seen(jnp.zeros(num_train, jnp.int32))


@dataclasses.dataclass(frozen=True)
class CountingCE(Method):
  """Cross-entropy that counts, in place, the examples it sees (as a memory bank would)."""
  needs_teacher = False

  def extras(self, setup):
    return Counter(setup.feeder.info.num_train)

  def loss(self, student, teacher, labels, epoch, aux):
    aux.extras.seen[...] = aux.extras.seen[...].at[aux.index].add(1)
    ce = cross_entropy(student.logits, labels)
    return ce, {"ce": ce}


def _trainer(config, dataset, devices=None, step_of=None):
  mesh = train.data_mesh(devices)
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  student = train.create_student(config, feeder.info.num_classes)
  method = CountingCE()
  extras = method.extras(Setup(student, None, feeder, nnx.Rngs(1)))
  trainer = train.Trainer(config, feeder, student, None, method, mesh, extras, None)
  if step_of is not None:
    # The step is pure (state, sums, frozen and batch are arguments): one compilation
    # serves every Trainer of this config; it keeps the default suite fast.
    trainer.train_step = step_of.train_step
  return trainer


def _seen(trainer):
  return np.asarray(jax.device_get(trainer.state.model_state["extras"]["seen"][...]))


def _params(trainer):
  return jax.device_get(jax.tree.leaves(trainer.state.params))


def _first_batch_counts(config):
  """The counts after step 1: one for each index of the first batch of epoch 0."""
  first = batching.epoch_permutation(config.seed, 0, NUM_TRAIN)[:BATCH]
  return np.bincount(np.asarray(first), minlength=NUM_TRAIN)


def test_method_state_is_updated_in_place_saved_and_resumed(tmp_path, config, dataset):
  """Each example is counted once per epoch; a run stopped after step 1 and resumed by a
  fresh Trainer ends with the same counts and bit-identical parameters."""
  stopped = _trainer(config, dataset)
  assert stopped.run(str(tmp_path / "resumed"), max_steps=1).stopped_at == 1
  np.testing.assert_array_equal(_seen(stopped), _first_batch_counts(config))
  resumed = _trainer(config, dataset, step_of=stopped)  # as a new process would build it
  assert resumed.run(str(tmp_path / "resumed")).finished

  straight = _trainer(config, dataset, step_of=stopped)
  assert straight.run(str(tmp_path / "straight")).finished
  np.testing.assert_array_equal(_seen(straight), np.full(NUM_TRAIN, 2))
  np.testing.assert_array_equal(_seen(resumed), _seen(straight))
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)


def test_method_state_on_1_device_as_on_8(tmp_path, config, dataset):
  """The in-place scatter by batch-sharded indices counts the same examples on one
  device as on eight (the 8-device counts after step 1 are checked above)."""
  one_device = _trainer(config, dataset, jax.devices()[:1])
  assert one_device.run(str(tmp_path / "one_device"), max_steps=1).stopped_at == 1
  np.testing.assert_array_equal(_seen(one_device), _first_batch_counts(config))


def test_train_py_knows_no_dataset_or_method_by_name():
  """Adding a dataset or a method is a row in its table, never an edit of the loop."""
  with open(os.path.join(REPO, "kd_jax", "train.py")) as f:
    source = f.read()
  found = [name for name in methods.METHODS if f'"{name}"' in source or f"'{name}'" in source]
  found += [cls.__name__ for cls in methods.METHODS.values()
            if re.search(rf"\b{cls.__name__}\b", source)]
  found += [word for word in ("cifar", "imagenet") if word in source.lower()]
  assert not found, f"kd_jax/train.py names {', '.join(found)}"
