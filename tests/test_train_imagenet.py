"""The host-fed (ImageNet) loop under tfds.testing.mock_data: the grain pipeline end to end,
and a mid-epoch resume that lands on the exact next batch."""
from flax import nnx
import jax
import numpy as np
import tensorflow_datasets as tfds

from configs import imagenet_kd
from kd_jax import checkpoint, models, train


def _config(teacher_dir):
  config = imagenet_kd.get_config("smoke")
  config.data.update(dict(source="tfds", image_size=32, num_threads=1))
  # Tiny CIFAR-style models keep compilation short; the pipeline is what is under test.
  config.teacher.model, config.student.model = "resnet8", "resnet8"
  config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
  config.batch_size, config.eval_batch_size, config.num_epochs = 8, 8, 2
  return config


def _params(workdir):
  return jax.tree.leaves(nnx.state(checkpoint.load_teacher(workdir, "resnet8", 1000)))


def test_imagenet_pipeline_trains_and_resumes_mid_epoch_exactly(tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  checkpoint.save_teacher(models.create("resnet8", 1000, rngs=nnx.Rngs(1)), teacher_dir,
                          model_name="resnet8", num_classes=1000)
  config = _config(teacher_dir)
  with tfds.testing.mock_data(num_examples=16):  # 2 steps per epoch, 2 epochs
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    stopped = train.train_and_evaluate(config, str(tmp_path / "resumed"), max_steps=1)
    assert stopped.stopped_at == 1
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert straight.last_top1 == resumed.last_top1
  for a, b in zip(_params(tmp_path / "straight"), _params(tmp_path / "resumed")):
    np.testing.assert_array_equal(a, b)
