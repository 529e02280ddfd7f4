"""Nothing lost when files go bad: damaged checkpoints, run files and caches.

Each kind of file is damaged the ways disks, copies and interrupted jobs damage files
(truncated, a byte flipped keeping the size, emptied, random bytes of the same size,
another format) and must give one UserError line naming it, or the documented repair.
"""
import json
import logging
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import checkpoint, manifest, models, run_files, train
from kd_jax.errors import UserError
from kd_jax.metrics import MetricWriter, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAMAGES = ("truncated", "flipped", "empty", "random", "wrong_format")
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def damage(path, how):
  """Damages the file at `path` as `how` says."""
  with open(path, "rb") as f:
    data = f.read()
  if how == "truncated":
    data = data[:len(data) // 2]
  elif how == "flipped":  # same size, one byte changed
    middle = len(data) // 2
    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
  elif how == "empty":
    data = b""
  elif how == "random":  # same size
    data = np.random.default_rng(len(data)).bytes(len(data))
  elif how == "wrong_format":  # another kind of file under this name
    data = PNG_HEADER + bytes(64)
  else:
    raise ValueError(how)
  with open(path, "wb") as f:
    f.write(data)


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
  return max(files, key=os.path.getsize)


def _snapshot(root):
  """{relative path: bytes} of every file under root: to show nothing was touched."""
  snapshot = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        snapshot[os.path.relpath(path, root)] = f.read()
  return snapshot


# ---------------------------------------------------------------- run checkpoints


def _tree(step):
  return {"weights": jnp.arange(2048, dtype=jnp.float32) + step, "step": jnp.asarray(step)}


def _two_checkpoints(workdir):
  saver = checkpoint.RunCheckpoints(workdir)
  for step in (4, 8):
    saver.save(step, _tree(step), {"epoch": step // 4})
  saver.close()
  return os.path.join(workdir, "checkpoints")


def test_every_visible_checkpoint_lists_all_its_item_files(tmp_path):
  """The manifest is written inside the step before Orbax makes it visible: it lists every
  file of the state and progress items under their final names."""
  checkpoints = _two_checkpoints(str(tmp_path))
  for step in ("4", "8"):
    step_dir = os.path.join(checkpoints, step)
    with open(os.path.join(step_dir, manifest.ITEM, manifest.FILENAME)) as f:
      listed = set(json.load(f)["crc32"])
    on_disk = {os.path.relpath(os.path.join(d, f), step_dir)
               for d, _, names in os.walk(step_dir) for f in names
               if os.path.relpath(d, step_dir).split(os.sep)[0] in ("state", "progress")}
    assert listed == on_disk and any(p.startswith("state/") for p in listed)
    assert manifest.step_problem(step_dir) is None


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_newest_checkpoint_is_skipped_for_the_older_one(tmp_path, caplog, how):
  checkpoints = _two_checkpoints(str(tmp_path))
  damage(_largest_file(os.path.join(checkpoints, "8", "state")), how)
  saver = checkpoint.RunCheckpoints(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    state, progress, step = saver.restore(checkpoint.abstract_like(_tree(0)))
  assert step == 4 and progress == {"epoch": 1}
  np.testing.assert_array_equal(state["weights"], _tree(4)["weights"])
  assert f"checkpoint {checkpoints}/8 is damaged" in caplog.text
  # Set aside, not deleted; the resumed run saves step 8 again.
  assert os.listdir(os.path.join(str(tmp_path), "checkpoints_damaged"))[0].startswith("8.")
  saver.save(8, _tree(8), {"epoch": 2})
  saver.close()
  assert checkpoint.RunCheckpoints(str(tmp_path)).restore(
      checkpoint.abstract_like(_tree(0)))[2] == 8


def test_restore_at_most_a_step_sets_the_newer_intact_one_aside(tmp_path):
  """Seeds resume together: one seed's damaged step 8 sends every seed back to step 4, so
  an intact step 8 is set aside (kept) for the resumed run to save step 8 again."""
  checkpoints = _two_checkpoints(str(tmp_path))
  saver = checkpoint.RunCheckpoints(str(tmp_path))
  assert saver.restore(checkpoint.abstract_like(_tree(0)), at_most=4)[2] == 4
  assert sorted(os.listdir(checkpoints)) == ["4"]
  aside = os.path.join(str(tmp_path), "checkpoints_damaged")
  (moved,) = os.listdir(aside)
  assert manifest.step_problem(os.path.join(aside, moved)) is None  # intact, kept
  saver.close()


def test_checkpoint_orbax_cannot_read_is_skipped(tmp_path, caplog):
  """No manifest to catch it (a checkpoint of an older kd_jax): Orbax's own failure counts."""
  checkpoints = _two_checkpoints(str(tmp_path))
  shutil.rmtree(os.path.join(checkpoints, "8", manifest.ITEM))
  damage(os.path.join(checkpoints, "8", "progress", "metadata"), "wrong_format")
  with caplog.at_level(logging.WARNING):
    step = checkpoint.RunCheckpoints(str(tmp_path)).restore(
        checkpoint.abstract_like(_tree(0)))[2]
  assert step == 4 and "Orbax cannot read it" in caplog.text


def test_no_intact_checkpoint_is_one_line_and_nothing_is_deleted(tmp_path):
  checkpoints = _two_checkpoints(str(tmp_path))
  for step, how in (("4", "flipped"), ("8", "truncated")):
    damage(_largest_file(os.path.join(checkpoints, step, "state")), how)
  before = _snapshot(str(tmp_path))
  with pytest.raises(UserError, match=r"no intact checkpoint in .*checkpoints \(steps 4, 8 "
                     r"are damaged.*nothing was deleted") as error:
    checkpoint.RunCheckpoints(str(tmp_path)).restore(checkpoint.abstract_like(_tree(0)))
  assert "\n" not in str(error.value)
  assert _snapshot(str(tmp_path)) == before


# ---------------------------------------------------------------- final student / teacher


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("teacher"))
  checkpoint.save_teacher(models.create("resnet8", 10, rngs=nnx.Rngs(3)), path,
                          model_name="resnet8", num_classes=10)
  return path


def _copy(path, tmp_path):
  return shutil.copytree(path, str(tmp_path / "copy"))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_teacher_state_is_one_line_naming_it(tmp_path, saved_teacher, how):
  teacher = _copy(saved_teacher, tmp_path)
  damage(_largest_file(os.path.join(teacher, "state")), how)
  with pytest.raises(UserError, match=rf"{teacher}/state is damaged \(.*\); restore it") as error:
    checkpoint.load_teacher(teacher, "resnet8", 10)
  assert "\n" not in str(error.value)


def test_intact_teacher_passes_its_manifest(saved_teacher):
  assert manifest.problem(os.path.join(saved_teacher, "state"),
                          manifest.beside(os.path.join(saved_teacher, "state"))) is None
  checkpoint.load_teacher(saved_teacher, "resnet8", 10)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_teacher_info_is_one_line_naming_it(tmp_path, saved_teacher, how):
  teacher = _copy(saved_teacher, tmp_path)
  damage(os.path.join(teacher, checkpoint.TEACHER_INFO), how)
  with pytest.raises(UserError, match=rf"{teacher}/teacher.json is damaged"):
    checkpoint.load_teacher(teacher, "resnet8", 10)


# ---------------------------------------------------------------- run files


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_config_json_is_one_line_naming_it(tmp_path, tiny_kd_config, dataset, how):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  train._record_run(tiny_kd_config, workdir, 10)  # pylint: disable=protected-access
  damage(os.path.join(workdir, "config.json"), how)
  before = _snapshot(workdir)
  with pytest.raises(UserError, match=rf"{workdir}/config.json is damaged \(.*\); use "
                     "--overwrite") as error:
    train.train_and_evaluate(tiny_kd_config, workdir, dataset)
  assert "\n" not in str(error.value) and _snapshot(workdir) == before


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_summary_json_is_one_line_naming_it(tmp_path, tiny_kd_config, dataset, how):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  train._record_run(tiny_kd_config, workdir, 10)  # pylint: disable=protected-access
  train.write_summary(os.path.join(workdir, "summary.json"),
                      train.RunResult(50.0, 2, 49.0, 60.0, 2, 1.0))
  assert train.read_summary(os.path.join(workdir, "summary.json")).best_top1 == 50.0
  damage(os.path.join(workdir, "summary.json"), how)
  with pytest.raises(UserError, match=rf"{workdir}/summary.json is damaged .*delete it and "
                     "rerun"):
    train.train_and_evaluate(tiny_kd_config, workdir, dataset)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_run_json_of_a_teacher_run_is_one_line_naming_it(tmp_path, tiny_kd_config, how):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  train._record_run(tiny_kd_config, workdir, 10)  # pylint: disable=protected-access
  damage(os.path.join(workdir, checkpoint.RUN_INFO), how)
  with pytest.raises(UserError, match=rf"{workdir}/run.json is damaged"):
    checkpoint.load_teacher(workdir, "resnet8", 10)


def test_interrupted_last_metrics_line_is_repaired(tmp_path, caplog):
  workdir = str(tmp_path)
  writer = MetricWriter(workdir)
  writer.write(1, "train", {"loss": 2.0})
  writer.close()
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2, "kind": "tr')  # killed mid-write
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in read_metrics(workdir)] == [1]  # read as it is
    writer = MetricWriter(workdir)  # the resumed run appends after repairing it
  writer.write(2, "train", {"loss": 1.0})
  writer.close()
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
  assert "interrupted last line" in caplog.text


@pytest.mark.parametrize("how", ("flipped", "random", "wrong_format"))
def test_damaged_metrics_line_is_one_line_naming_the_file(tmp_path, how):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "kind": "train", "loss": 1.0}) + "\n"
                          for s in range(3)))
  damage(str(path), how)
  with pytest.raises(UserError, match=rf"{path} is damaged at line \d"):
    read_metrics(str(tmp_path))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_cache_is_recomputed(tmp_path, caplog, how):
  info = type("Info", (), {"cache_key": "cifar10"})()
  cached = train._cache(str(tmp_path / "teacher.pth"), info, str(tmp_path))  # pylint: disable=protected-access
  means = np.arange(12, dtype=np.float32).reshape(3, 4)
  calls = []

  def compute():
    calls.append(1)
    return means

  np.testing.assert_array_equal(cached("class_means", (3, 4), compute), means)
  path = str(tmp_path / "teacher.pth.class_means.cifar10.npy")
  damage(path, how)
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(cached("class_means", (3, 4), compute), means)
  assert len(calls) == 2 and f"cache {path} is damaged" in caplog.text
  np.testing.assert_array_equal(run_files.load_cache(path), means)  # written again
  np.testing.assert_array_equal(cached("class_means", (3, 4), compute), means)
  assert len(calls) == 2


def test_main_says_one_line_for_a_damaged_config_json(tmp_path):
  """The whole path a user takes: main.py, exit status 2, one line, no traceback."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_bytes(b'{"seed": 0, "optim": {"lr"')  # truncated
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/cifar_kd.py:smoke", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if "config.json is damaged" in line]
  assert len(errors) == 1 and "--overwrite" in errors[0]


def test_evaluate_says_one_line_for_a_damaged_teacher(tmp_path, saved_teacher):
  """The evaluate tool checks the manifest: exit status 2, one line, no traceback."""
  teacher = _copy(saved_teacher, tmp_path)
  damage(_largest_file(os.path.join(teacher, "state")), "flipped")
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.tools.evaluate", f"--checkpoint={teacher}",
       "--model=resnet8", "--dataset=cifar10", "--source=synthetic", "--batch_size=32"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if "is damaged" in line]
  assert len(errors) == 1 and errors[0].startswith(f"error: {teacher}/state is damaged")


def test_runs_keep_an_older_checkpoint_to_fall_back_to(tiny_kd_config):
  from kd_jax import validate  # pylint: disable=g-import-not-at-top
  config = tiny_kd_config.copy_and_resolve_references()
  config.checkpoint_keep = 1
  with pytest.raises(UserError, match=r"config.checkpoint_keep=1 must be >= 2"):
    validate.check(config)
