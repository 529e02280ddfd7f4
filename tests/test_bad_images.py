"""Undecodable, truncated or wrong-format images in host-fed datasets (config.data.bad_images).

'stop' (the default): one line naming the file; 'skip': the file is left out, counted
(`skipped_images`) and named once in the log, while batches keep their shape and stay
deterministic (so an exact resume still holds).
"""
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax import train
from kd_jax.data import feeders, image_folder, imagenet
from kd_jax.errors import UserError
from kd_jax.metrics import read_metrics
from tests.test_damaged_files import damage
from tests.test_image_folder import REPO, _config, _write_folder


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
  """5 classes, 8 train and 2 val images each (jpg / png / JPEG)."""
  root = str(tmp_path_factory.mktemp("images"))
  _write_folder(root, {"train": 8, "val": 2})
  return root


def _damaged_copy(clean_folder, tmp_path, damages):
  """A copy of the folder with {relative path: how} damaged; returns (root, paths)."""
  root = shutil.copytree(clean_folder, str(tmp_path / "images"))
  paths = []
  for relative, how in damages.items():
    path = os.path.join(root, relative)
    if how in ("flipped_marker", "random_after_magic"):  # same size, the magic bytes kept
      with open(path, "rb") as f:
        data = f.read()
      data = (data[:3] + bytes([data[3] ^ 0xFF]) + data[4:] if how == "flipped_marker" else
              data[:3] + np.random.default_rng(0).bytes(len(data) - 3))
      with open(path, "wb") as f:
        f.write(data)
    else:
      damage(path, how)
    paths.append(path)
  return root, paths


# ---------------------------------------------------------------- the folder scan


@pytest.mark.parametrize("how", ["empty", "random", "wrong_format_text"])
def test_scan_stops_naming_a_file_that_is_no_image(clean_folder, tmp_path, how):
  root, (path,) = _damaged_copy(clean_folder, tmp_path, {"train/cat/cat_1.png": (
      "empty" if how == "empty" else "random")})
  if how == "wrong_format_text":
    with open(path, "w") as f:
      f.write("<html>404 Not Found</html>")
  with pytest.raises(UserError, match=rf"{path}: .*; replace or remove it, or set "
                     r"config.data.bad_images='skip'") as error:
    image_folder.load(root)
  assert "\n" not in str(error.value)


def test_scan_skips_files_that_are_no_image_naming_each(clean_folder, tmp_path, caplog):
  root, paths = _damaged_copy(clean_folder, tmp_path, {"train/cat/cat_1.png": "empty",
                                                       "val/dog/dog_0.jpg": "random"})
  with caplog.at_level(logging.WARNING):
    splits = image_folder.load(root, bad_images="skip")
  assert len(splits.train) == 39 and len(splits.test) == 9
  assert sorted(splits.skipped) == sorted(paths)
  for path in paths:
    assert caplog.text.count(f"skipped image {path}") == 1


# ---------------------------------------------------------------- decoding (grain workers)


# Damage the scan cannot see: a truncated JPEG / PNG, a JPEG with a byte of its first
# marker flipped, random bytes behind a JPEG's magic bytes.
DECODE_DAMAGES = {"train/cat/cat_0.jpg": "truncated", "train/dog/dog_1.png": "truncated",
                  "train/eel/eel_2.JPEG": "flipped_marker", "train/bee/bee_0.jpg":
                  "random_after_magic"}


def test_decode_failures_stop_naming_the_file(clean_folder, tmp_path):
  root, paths = _damaged_copy(clean_folder, tmp_path, DECODE_DAMAGES)
  config = _config(root)
  feeder = feeders.create(config, train.data_mesh())
  with pytest.raises(UserError,
                     match=r"cannot be decoded as an image .*bad_images='skip'") as error:
    for _ in feeder.train_batches(0):
      pass
  assert "\n" not in str(error.value) and str(error.value).split(" cannot")[0] in paths


def _epochs(root, bad_images, num_epochs=2):
  records = image_folder.load(root).train
  iterator = imagenet.make_train_iterator(8, seed=3, records=records, image_size=32,
                                          num_epochs=num_epochs, num_threads=1, worker_count=0,
                                          bad_images=bad_images)
  return records, iterator


def test_skip_replaces_the_example_deterministically_and_resumes_exactly(clean_folder, tmp_path):
  root, paths = _damaged_copy(clean_folder, tmp_path, DECODE_DAMAGES)
  records, iterator = _epochs(root, "skip")
  batches = list(iterator)
  assert len(batches) == 10 and all(b["image"].shape == (8, 32, 32, 3) for b in batches)
  bad = np.concatenate([b["bad"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  skipped = bad != imagenet.NOT_BAD
  assert sorted({records.name(i) for i in bad[skipped]}) == sorted(paths)
  assert skipped.sum() == 2 * len(paths)  # each bad file once per epoch
  # The replacement is the next record that decodes, with its own label.
  for original, used in zip(bad[skipped], index[skipped]):
    assert used == (original + 1) % len(records) or records.name(used - 1) in paths
  assert list(labels) == [records[i]["label"] for i in index]
  # Deterministic: another pipeline, resumed at batch 6, gives the same batches.
  _, resumed = _epochs(root, "skip")
  resumed.set_state({**iterator.get_state(), "next_batch": 6})
  for expected, got in zip(batches[6:], resumed):
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key])


def test_feeder_counts_skipped_images_and_names_each_once(clean_folder, tmp_path, caplog):
  root, paths = _damaged_copy(clean_folder, tmp_path, {**DECODE_DAMAGES,
                                                       "val/bee/bee_1.png": "truncated"})
  config = _config(root)
  config.data.bad_images = "skip"
  feeder = feeders.create(config, train.data_mesh())
  with caplog.at_level(logging.WARNING):
    for epoch in range(2):
      for _, batch in zip(range(feeder.steps_per_epoch), feeder.train_batches(epoch)):
        assert batch["image"].shape == (8, 32, 32, 3)
    masks = [jax.device_get(b["mask"]) for b in feeder.eval_batches()]
  assert feeder.skipped_images == 5
  assert sum(m.sum() for m in masks) == 9  # the undecodable val image is left out
  for path in paths:
    assert caplog.text.count(f"skipped image {path}") == 1


@pytest.mark.slow
def test_skipped_images_reach_the_metrics(clean_folder, tmp_path):
  """End to end (slow): a CE run on a folder with a bad file logs skipped_images."""
  root, _ = _damaged_copy(clean_folder, tmp_path, {"train/cat/cat_0.jpg": "truncated"})
  config = _config(root, "ce,smoke")
  config.data.bad_images, config.num_epochs = "skip", 1
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  assert read_metrics(workdir, "train")[-1]["skipped_images"] == 1


def test_log_adds_skipped_images_of_the_feeder(monkeypatch):
  """Fast stand-in for the slow test above: Trainer._log reports the feeder's count."""
  written = []

  class Writer:
    def write(self, step, kind, scalars):
      written.append((kind, scalars))

  class Meter:
    def line(self, *args):
      return 1.0

  trainer = train.Trainer.__new__(train.Trainer)
  trainer.config = _config("unused")
  trainer.config.skip_nonfinite = False
  trainer.steps_per_epoch, trainer.schedule = 4, lambda step: 0.1
  trainer.rates, trainer.step_flops = [], None
  trainer.feeder = type("Feeder", (), {"skipped_images": 3})()
  from kd_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  sums = {"loss": np.float32(2.0), step_lib.FIRST_NONFINITE: np.int32(step_lib.NEVER)}
  trainer._log(Writer(), Meter(), 2, sums, 2)  # pylint: disable=protected-access
  assert written[0][1]["skipped_images"] == 3 and written[0][1]["loss"] == 1.0


@pytest.mark.slow  # fast check of the same: test_decode_failures_stop_naming_the_file
def test_main_stops_with_one_line_naming_an_undecodable_image(clean_folder, tmp_path):
  root, (path,) = _damaged_copy(clean_folder, tmp_path, {"train/cat/cat_0.jpg": "truncated"})
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/image_folder.py:ce,smoke",
       f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={root}"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if "cannot be decoded" in line]
  assert len(errors) == 1 and path in errors[0]
