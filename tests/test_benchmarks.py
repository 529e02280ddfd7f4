"""The speed benchmarks run end to end on tiny models and report the promised fields."""
import importlib
import importlib.util

import pytest

from benchmarks import train_step

HAS_TORCH = importlib.util.find_spec("torch") is not None
FIELDS = ("pair", "method", "batch_size", "mode", "images_per_second", "step_ms",
          "compile_s", "device", "platform", "cpu_count", "framework")


@pytest.mark.slow
def test_step_loop_and_torch_records(tmp_path):
  """resnet8 -> resnet8, batch 16, 2 timed steps: step, loop, torch and ratio lines."""
  records = train_step.run(["resnet8:resnet8"], ["kd", "no_such_method"], batch_size=16,
                           steps=2, repeats=1, mode="both", loop_steps=2,
                           compare_torch=HAS_TORCH, workdir=str(tmp_path))
  kinds = {}
  for record in records:
    kinds.setdefault(record["kind"], []).append(record)
  assert any("no_such_method" in r["note"] for r in kinds["note"])

  measured = {(r["framework"], r["mode"]): r for r in kinds["measurement"]}
  expected = {("kd_jax", "step"), ("kd_jax", "loop")} | ({("torch", "step")} if HAS_TORCH
                                                         else set())
  assert set(measured) == expected
  for record in measured.values():
    assert all(field in record for field in FIELDS), record
    assert record["pair"] == "resnet8:resnet8" and record["method"] == "kd"
    assert record["batch_size"] == 16 and record["images_per_second"] > 0
    assert record["step_ms"] > 0 and record["compile_s"] > 0
  jax_step = measured[("kd_jax", "step")]
  assert {"jax", "flax"} <= set(jax_step)
  loop = measured[("kd_jax", "loop")]
  assert loop["steps_per_epoch"] == 2
  assert loop["projected_recipe_minutes"] == pytest.approx(
      240 * 3125 * loop["step_ms"] / 6e4, abs=0.1)  # 50,000 / 16 = 3125 steps an epoch

  ratios = {r["ratio"].split(" ")[0]: r["value"] for r in kinds["ratio"]}
  assert ratios["loop/step"] > 0
  if HAS_TORCH:
    assert ratios["kd_jax/torch"] > 0


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_step_alone():
  """The standalone PyTorch benchmark: one JSON-ready record per method."""
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  records = torch_step.measure(["resnet8:resnet8"], ["kd", "ce"], batch_size=8, steps=1,
                               repeats=1)
  assert [r["method"] for r in records] == ["kd", "ce"]
  assert all(r["framework"] == "torch" and r["images_per_second"] > 0 for r in records)


@pytest.mark.slow
def test_conv_layers_records():
  """Every layer of resnet8 gets forward / input_grad / weight_grad lines per framework."""
  from benchmarks import conv_layers  # pylint: disable=g-import-not-at-top
  records = conv_layers.run("resnet8", batch_size=2, calls=1, repeats=1, with_torch=HAS_TORCH)
  frameworks = {"kd_jax", "torch"} if HAS_TORCH else {"kd_jax"}
  keys = {(r["framework"], r["op"], r["size"], r["in"], r["out"]) for r in records}
  assert len(keys) == len(records) == 6 * 3 * len(frameworks)
  assert {r["framework"] for r in records} == frameworks
  assert all(r["ms"] > 0 and r["gflop_per_s"] > 0 for r in records)
  # resnet8's stride-2 layer 16 -> 32 at 32x32 input: 2 * 2 * 16 * 16 * 32 * 9 * 16 MACs.
  assert conv_layers.gflop(2, 32, 16, 32, 2) == 2 * 2 * 16 * 16 * 32 * 9 * 16 / 1e9


@pytest.mark.parametrize("module,argv,message", [
    ("train_step", ["--pair", "nope"], "unknown pair 'nope'"),
    ("conv_layers", ["--model", "vgg8"], "got 'vgg8'"),
    ("input_pipeline", ["--settings", "auto,x3"], "bad setting 'x3'"),
    ("input_pipeline", ["--train-augment", "rand-x3"], "unknown section 'x3'"),
    ("input_pipeline", ["--interpolation", "lanczos"], "unknown interpolation 'lanczos'")])
def test_bad_arguments_exit_with_one_line(module, argv, message, capsys):
  """A bad pair or model name: argparse's one-line error and exit status 2, no traceback."""
  main = importlib.import_module(f"benchmarks.{module}").main
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.slow
def test_input_pipeline_benchmark_on_a_few_images(tmp_path):
  """Writes 12 JPEGs, times kd_jax's train and eval pipelines (and torchvision's where it
  imports), and reports the per-stage breakdown."""
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  records = input_pipeline.run(images=12, data_dir=str(tmp_path), batch_size=4,
                               settings=("auto", "t1"), torch_workers=(0,), repeats=2,
                               block_batches=1, stage_images=8, with_torch=HAS_TORCH)
  kinds = {}
  for record in records:
    kinds.setdefault(record["kind"], []).append(record)
  host = kinds["host"][0]
  assert host["images"]["count"] == 12 and host["usable_cores"] >= 1 and "pillow" in host
  stages = {r["split"]: r for r in kinds["stage"] if "ms_per_image" in r}
  assert set(stages["train"]["ms_per_image"]) == {"read", "python", "decode", "crop_resize",
                                                  "flip_to_array", "batch"}
  assert set(stages["eval"]["ms_per_image"]) == {"read", "decode", "crop_resize", "to_array",
                                                 "batch"}
  assert all(v >= 0 for r in stages.values() for v in r["ms_per_image"].values())
  measured = {(r["framework"], r["split"], r["setting"]) for r in kinds["measurement"]}
  expected = {("kd_jax", split, s) for split in ("train", "eval") for s in ("auto", "t1")}
  assert expected <= measured
  assert all(r["images_per_second"] > 0 and len(r["samples"]) == 2
             for r in kinds["measurement"])
  # The images are reused: a second call writes nothing new.
  assert input_pipeline.write_images(str(tmp_path), 12) == host["images"]


@pytest.mark.slow
def test_input_pipeline_benchmark_with_deit_augmentation(tmp_path):
  """--train-augment / --interpolation: kd_jax's DeiT transform (and timm's, where it
  imports) timed, RandAugment in the stage breakdown."""
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  with_timm = HAS_TORCH and importlib.util.find_spec("timm") is not None
  records = input_pipeline.run(images=8, data_dir=str(tmp_path), batch_size=4, settings=("t1",),
                               torch_workers=(0,), splits=("train",), repeats=1, block_batches=1,
                               stage_images=4, with_torch=with_timm,
                               train_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic")
  stages = [r for r in records if r["kind"] == "stage" and r.get("split") == "train"
            and "ms_per_image" in r]
  assert "rand_augment" in stages[0]["ms_per_image"]
  measured = {r["framework"] for r in records if r["kind"] == "measurement"}
  assert measured == ({"kd_jax", "timm"} if with_timm else {"kd_jax"})
