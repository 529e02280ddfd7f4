"""Your own images, one folder per class: the loader, its host feeder and every method.

The folder is written here with Pillow: mixed formats, modes and resolutions, as a real
one is, plus a stray non-image file.
"""
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import image_folder as image_folder_config
from kd_jax import methods, train
from kd_jax.data import feeders, image_folder
from kd_jax.errors import UserError
from kd_jax.metrics import read_metrics
from tests import micro_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written in this (unsorted) order; class k is the k-th in sorted order.
CLASSES = ("eel", "ant", "dog", "bee", "cat")
SORTED = tuple(sorted(CLASSES))
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 2
# (extension, Pillow mode, (width, height)), cycled over each class's files.
FORMATS = (("jpg", "RGB", (40, 30)), ("png", "RGBA", (48, 48)), ("JPEG", "RGB", (64, 80)),
           ("png", "L", (36, 52)))


def _write_image(path, mode, size, colour, rng):
  """A class-coloured image with noise (so every file's bytes differ)."""
  width, height = size
  pixels = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 20, (height, width, 3)), 0, 255)
  image = Image.fromarray(pixels.astype(np.uint8), "RGB")
  if mode == "RGBA":
    image = image.convert("RGBA")
  elif mode == "L":
    image = image.convert("L")
  image.save(path)


def _write_folder(root, per_class, classes=CLASSES, seed=0):
  """root/<split>/<class>/ images; returns {file bytes: class name}."""
  rng = np.random.default_rng(seed)
  owner = {}
  for split, count in per_class.items():
    for number, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      colour = [(60 * number * (channel + 1)) % 256 for channel in range(3)]
      for k in range(count):
        extension, mode, size = FORMATS[k % len(FORMATS)]
        path = os.path.join(folder, f"{name}_{k}.{extension}")
        _write_image(path, mode, size, colour, rng)
        with open(path, "rb") as f:
          owner[f.read()] = name
      with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
  return owner


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """(data_dir, {bytes: class}): 5 classes, 8 train and 2 val images each."""
  root = str(tmp_path_factory.mktemp("images"))
  return root, _write_folder(root, {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS})


def _config(data_dir, arg="kd,smoke"):
  config = image_folder_config.get_config(arg)
  config.data.data_dir = data_dir
  config.batch_size, config.eval_batch_size = 8, 8
  config.data.image_size = 32
  return config


def test_load_labels_follow_the_sorted_train_folders(folder):
  data_dir, owner = folder
  splits = image_folder.load(data_dir)
  assert splits.classes == SORTED and splits.num_classes == 5
  assert len(splits.train) == 5 * TRAIN_PER_CLASS and len(splits.test) == 5 * VAL_PER_CLASS
  for records in (splits.train, splits.test):
    for record in records:  # each record: its file's bytes, and its folder's index
      assert record["label"] == SORTED.index(owner[record["image"]])
  assert sorted({r["label"] for r in splits.train}) == list(range(5))


def test_val_may_lack_a_class_and_keeps_the_train_order(tmp_path):
  owner = _write_folder(str(tmp_path), {"train": 2})
  owner.update(_write_folder(str(tmp_path), {"val": 1}, classes=("cat", "eel"), seed=1))
  splits = image_folder.load(str(tmp_path))
  assert splits.classes == SORTED
  labels = sorted(record["label"] for record in splits.test)
  assert labels == [SORTED.index("cat"), SORTED.index("eel")] == [2, 4]


def _error(data_dir, **kwargs):
  with pytest.raises(UserError) as error:
    image_folder.load(data_dir, **kwargs)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_bad_folders_are_one_line_errors(tmp_path):
  """Each way a folder can fail to be a dataset names what is wrong and where."""
  assert "config.data.data_dir is not set" in _error("")
  root = str(tmp_path / "data")
  os.makedirs(os.path.join(root, "train", "cat"))
  message = _error(root)  # no val/
  assert f"{root}/val not found" in message and "<class>" in message
  assert f"{root}/test not found" in _error(root, test_split="test")
  os.makedirs(os.path.join(root, "val", "cat"))
  with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
    f.write("x")
  message = _error(root)  # folders, but no image files
  assert "no image files" in message and f"{root}/train" in message
  Image.new("RGB", (8, 8)).save(os.path.join(root, "train", "cat", "a.png"))
  Image.new("RGB", (8, 8)).save(os.path.join(root, "val", "cat", "a.png"))
  message = _error(root)
  assert "1 class folder" in message and "two or more" in message
  os.makedirs(os.path.join(root, "train", "dog"))
  os.makedirs(os.path.join(root, "val", "zebra"))
  message = _error(root)  # a val class that train lacks
  assert f"{root}/val" in message and "zebra" in message and "training split lacks" in message


def test_host_feeder_batches_carry_dataset_indices(folder):
  """The loss's `aux.index` names the record each example came from."""
  config = _config(folder[0])
  records = feeders.load(config).train
  feeder = feeders.create(config, train.data_mesh(), feeders.load(config))
  assert feeder.steps_per_epoch == 5  # 40 images, batch 8
  seen = []
  for _, batch in zip(range(feeder.steps_per_epoch), feeder.train_batches(0)):
    labels, index = jax.device_get((batch["label"], batch["index"]))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert list(labels) == [records[i]["label"] for i in index]
    seen.extend(index.tolist())
  assert len(set(seen)) == len(seen) == 40  # an epoch: each example once


def test_kd_trains_its_teacher_then_the_student_in_process(folder, tmp_path):
  """The image_folder config end to end: teacher bootstrapped (1 epoch), student 2. On a
  micro CNN teacher and student (tests/micro_cnn.py): the folder pipeline and the
  bootstrapping are under test, not the model (the slow main.py runs below use resnet8)."""
  workdir = str(tmp_path / "run")
  config = _config(folder[0])
  config.teacher.model = config.student.model = micro_cnn.NAME
  with micro_cnn.registered():
    result = train.train_and_evaluate(config, workdir)
  assert result.finished and result.epochs == 2
  assert result.teacher_top1 is not None
  assert len(read_metrics(workdir, "teacher_eval")) == 1
  evals = read_metrics(workdir, "eval")
  assert [r["epoch"] for r in evals] == [1, 2] and "top5" in evals[0]
  assert [r["epoch"] for r in read_metrics(os.path.join(workdir, "teacher"), "eval")] == [1]


# --------------------------------------------------------------------------- main.py


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_teacher(folder, tmp_path_factory):
  """A `ce,smoke` run on the folder: the teacher of every other method's run."""
  workdir = str(tmp_path_factory.mktemp("teacher_run"))
  result = _main("--config=configs/image_folder.py:ce,smoke", f"--workdir={workdir}",
                 f"--config.data.data_dir={folder[0]}", "--config.student.model=resnet8")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    n for n, cls in methods.METHODS.items() if cls.num_views == 1
    and cls.task == "classification" and not hasattr(cls, "nd_base")])
def test_every_method_runs_on_a_folder_from_main(folder, trained_teacher, tmp_path, name):
  """Every classification method but the generated `<base>_nd` (one step of each of those:
  test_nd_addon.py's slow every-base test)."""
  student = (["--config.student.model=deit_micro_distilled_patch16_64",  # two heads, 64 px
              "--config.data.image_size=64"]
             if methods.METHODS[name].needs_distillation_token else [])
  result = _main(f"--config=configs/image_folder.py:{name},smoke", f"--workdir={tmp_path}",
                 f"--config.data.data_dir={folder[0]}",
                 f"--config.teacher.checkpoint={trained_teacher}",
                 "--config.teacher.train_epochs=0", *student)
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(read_metrics(str(tmp_path), "eval")) == 2
  assert not (tmp_path / "teacher").exists()  # the given teacher, none trained


def test_multi_view_method_on_a_folder_is_one_line(folder, tmp_path):
  """cskd_mv makes its strong view on the device from raw images; folders are augmented
  on the host: refused up front, before any teacher is trained or the workdir written."""
  workdir = tmp_path / "mv"
  result = _main("--config=configs/image_folder.py:cskd_mv,smoke", f"--workdir={workdir}",
                 f"--config.data.data_dir={folder[0]}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "cskd_mv" in error_lines[0], result.stderr[-2000:]
  assert not workdir.exists()
