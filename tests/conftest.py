"""Test session set-up: 8 simulated CPU devices, so sharding tests can compare 1 vs 8.

Set before JAX initialises its backends; single-device tests just use device 0. Runs
share one compilation cache in a temporary directory, not the user's ~/.cache.
"""
import os
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
os.environ.setdefault("KD_JAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="kd_jax_xla_"))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def dataset():
  """A small synthetic CIFAR-10-shaped dataset (64 train, 32 test images)."""
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  return data.load("cifar10", "synthetic", synthetic_train_size=64, synthetic_test_size=32)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A saved resnet8 teacher (random weights, seed 7) for 10 classes."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint, models  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("teacher"))
  checkpoint.save_teacher(models.create("resnet8", 10, rngs=nnx.Rngs(7)), path,
                          model_name="resnet8", num_classes=10)
  return path


@pytest.fixture(scope="module")
def tiny_kd_config(teacher_dir):
  """The KD smoke config on that teacher: batch 16, 2 epochs, logs every 2 steps."""
  from configs import cifar_kd  # pylint: disable=g-import-not-at-top
  config = cifar_kd.get_config("smoke")
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      "resnet8", teacher_dir, 0)
  config.batch_size, config.num_epochs, config.eval_batch_size, config.log_every_steps = 16, 2, 32, 2
  return config
