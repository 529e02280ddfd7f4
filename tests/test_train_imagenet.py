"""The host-fed (ImageNet) loop under tfds.testing.mock_data: the grain pipeline end to end,
and a mid-epoch resume that lands on the exact next batch."""
import numpy as np
import tensorflow_datasets as tfds

from configs import imagenet_kd
from kd_jax import train
from tests import micro_cnn


def _config(teacher_dir):
  config = imagenet_kd.get_config("smoke")
  config.data.update(dict(source="tfds", image_size=32, num_threads=1))
  # A micro CNN keeps compilation short (tests/micro_cnn.py); the pipeline is under test.
  config.teacher.model = config.student.model = micro_cnn.NAME
  config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
  config.batch_size, config.eval_batch_size, config.num_epochs = 8, 8, 2
  return config


def test_imagenet_pipeline_trains_and_resumes_mid_epoch_exactly(tmp_path):
  with micro_cnn.registered():
    config = _config(micro_cnn.save_teacher(str(tmp_path / "teacher"), 1000, seed=1))
    with tfds.testing.mock_data(num_examples=16):  # 2 steps per epoch, 2 epochs
      straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
      stopped = train.train_and_evaluate(config, str(tmp_path / "resumed"), max_steps=1)
      assert stopped.stopped_at == 1
      resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert straight.last_top1 == resumed.last_top1
    for a, b in zip(micro_cnn.final_params(tmp_path / "straight", 1000),
                    micro_cnn.final_params(tmp_path / "resumed", 1000)):
      np.testing.assert_array_equal(a, b)
