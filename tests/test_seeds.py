"""Seeds in one program (kd_jax.seeds): each seed's numbers are those of the seed alone.

Why bits may differ from a run alone: a program of several seeds is another XLA program
(another fusion and, with 'vmap', batched convolutions), and a seed alone in
train_and_evaluate splits its batch over all 8 test devices while here it may use 1 or
4, so float32 sums are added in another order (~1e-7 relative per step). Resuming a
program of seeds is the same program again: bit-exact.
"""
import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import imagenet_kd
from kd_jax import checkpoint, methods, seeds, train
from kd_jax.data import feeders
from kd_jax.errors import UserError
from kd_jax.metrics import MetricWriter, read_metrics
from kd_jax.tools import summarize
from tests import micro_cnn

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def config(tiny_kd_config, tmp_path_factory):
  """tiny_kd_config with a micro CNN teacher and student: a seed's numbers in a program of
  seeds against the seed alone do not depend on the model, and each step and run costs a
  fraction of resnet8's (tests/micro_cnn.py)."""
  with micro_cnn.registered():
    yield micro_cnn.kd_config(tiny_kd_config, str(tmp_path_factory.mktemp("teacher")))


def test_seeds_are_laid_over_the_devices_first():
  devices = jax.devices()
  shape = lambda n, d: dict(seeds.seeds_mesh(n, devices[:d]).shape)
  assert shape(4, 8) == {"seed": 4, "data": 2}
  assert shape(8, 4) == {"seed": 4, "data": 1}  # two seeds on each device
  assert shape(3, 4) == {"seed": 1, "data": 4}  # each seed's batch over the 4 devices
  assert shape(5, 1) == {"seed": 1, "data": 1}


def test_more_seeds_than_fit_is_one_line_saying_how_many_fit():
  memory = seeds.StepMemory(per_device=10 * seeds.GIB, shared=2 * seeds.GIB, seeds_per_device=4)
  assert memory.per_seed == 2 * seeds.GIB
  with pytest.raises(UserError) as error:
    seeds.check_fits(memory, 8 * seeds.GIB, 8, 2, "H100", 2)
  assert str(error.value) == (
      "--seeds: 8 seeds need about 10.0 GiB on each device (2.00 GiB per seed + 2.00 GiB "
      "shared) but a H100 has 8.0 GiB: about 6 fit on these 2 devices; pass at most 6 seeds")
  seeds.check_fits(memory, 10 * seeds.GIB, 8, 2, "H100", 2)  # fits
  seeds.check_fits(memory, None, 8, 2, "cpu", 2)  # unknown (CPU): no check


def test_host_fed_dataset_with_several_seeds_is_one_line(tmp_path):
  with pytest.raises(UserError, match="fed from the host, where several seeds in one "
                     r"program are not supported; run one seed at a time \(--config.seed=N\)"):
    seeds.train_and_evaluate_seeds(imagenet_kd.get_config("smoke"), [0, 1],
                                   [str(tmp_path / "0"), str(tmp_path / "1")])
  assert not os.listdir(tmp_path)


def _trainers(config, dataset, seed_list, devices, within=None):
  """One SeedsTrainer of `seed_list` over `devices` and a Trainer per seed on 1 device."""
  method = methods.create(config.method)
  teacher = checkpoint.load_teacher(config.teacher.checkpoint, micro_cnn.NAME, 10)
  mesh = seeds.seeds_mesh(len(seed_list), devices)
  feeder = feeders.DeviceFeeder(dataset, config, mesh)
  configs = [seeds._with_seed(config, seed) for seed in seed_list]  # pylint: disable=protected-access
  students = [train.create_student(c, 10) for c in configs]
  together = seeds.SeedsTrainer(config, seed_list, feeder, students, [teacher] * len(seed_list),
                                method, mesh, [None] * len(seed_list), [None] * len(seed_list),
                                within_device=within)
  alone = []
  for c in configs:
    single_mesh = train.data_mesh(jax.devices()[:1])
    alone.append(train.Trainer(c, feeders.DeviceFeeder(dataset, c, single_mesh),
                               train.create_student(c, 10), teacher, method, single_mesh))
  return together, alone


def _step(trainer, batch):
  trainer.state, sums = trainer.train_step(trainer.state, trainer.init_metric_sums(),
                                           trainer.frozen, batch)
  return jax.device_get(sums)


@pytest.mark.parametrize("within,num_devices", [
    ("loop", 2), pytest.param("vmap", 2, marks=pytest.mark.slow),
    pytest.param("vmap", 1, marks=pytest.mark.slow)])
def test_two_steps_of_two_seeds_equal_each_seed_alone(config, dataset, within, num_devices):
  """Two devices: seed axis 2, one seed per device; one device: both seeds on it. Each
  seed's metrics and parameters after two steps are those of a Trainer of that seed alone
  (different order, init, augmentation)."""
  together, alone = _trainers(config, dataset, [3, 5], jax.devices()[:num_devices], within)
  assert dict(together.mesh.shape) == {"seed": num_devices, "data": 1}
  assert together.memory.per_seed > 0 and together.memory.shared > 0
  batch = next(together.feeder.train_batches(0))
  for _ in range(2):
    sums = _step(together, batch)
    for index, single in enumerate(alone):
      single_sums = _step(single, single.feeder.example_train_batch())
      for key, value in single_sums.items():
        np.testing.assert_allclose(sums[key][index], value, rtol=1e-5, atol=1e-6, err_msg=key)
  params = jax.device_get(together.state.params)
  for index, single in enumerate(alone):
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(single.state.params))):
      np.testing.assert_allclose(a[index], b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(params)[0][0], jax.tree.leaves(params)[0][1])


def _final_params(workdir):
  return micro_cnn.final_params(workdir)


@pytest.fixture(scope="module")
def alone_runs(tmp_path_factory, config, dataset):
  """Each seed run alone by train_and_evaluate (8 devices)."""
  root = tmp_path_factory.mktemp("alone")
  for seed in SEEDS:
    train.train_and_evaluate(seeds._with_seed(config, seed), str(root / f"seed{seed}"), dataset)  # pylint: disable=protected-access
  return root


@pytest.mark.slow
@pytest.mark.parametrize("num_devices", [1, 4])
def test_three_seeds_in_one_program_equal_three_runs_alone(tmp_path, config, dataset,
                                                           alone_runs, num_devices):
  """Same metrics (train and eval), summary and final parameters, and the workdir layout
  of a run alone, so summarize reads them as three seeds."""
  workdirs = [str(tmp_path / f"seed{seed}") for seed in SEEDS]
  results = seeds.train_and_evaluate_seeds(config, SEEDS, workdirs, dataset,
                                           devices=jax.devices()[:num_devices])
  assert all(result.finished for result in results)
  for seed, workdir in zip(SEEDS, workdirs):
    alone = str(alone_runs / f"seed{seed}")
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(alone))
    with open(os.path.join(workdir, "config.json")) as a, open(os.path.join(alone, "config.json")) as b:
      assert json.load(a) == json.load(b)
    for kind in ("train", "eval", "teacher_eval"):
      got, want = read_metrics(workdir, kind), read_metrics(alone, kind)
      assert [r["step"] for r in got] == [r["step"] for r in want]
      for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in g.keys() - {"images_per_second", "flops_per_second", "kind"}:
          np.testing.assert_allclose(g[key], w[key], rtol=2e-5, atol=2e-6, err_msg=key)
    for a, b in zip(_final_params(workdir), _final_params(alone)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
  runs = [summarize.load_run(w) for w in workdirs]
  assert [run.seed for run in runs] == list(SEEDS)


@pytest.mark.slow
def test_sigterm_stops_every_seed_and_resumes_them_exactly(tmp_path, monkeypatch, config,
                                                           dataset):
  """SIGTERM at the first log point (step 2 of 8): every seed checkpointed at the same step;
  the same call resumes them to bit-identical parameters and the same metrics."""
  straight = [str(tmp_path / "straight" / f"seed{seed}") for seed in SEEDS]
  seeds.train_and_evaluate_seeds(config, SEEDS, straight, dataset)
  original_write = MetricWriter.write
  sent = []

  def write_then_preempt(self, step, kind, scalars):  # one signal, as a scheduler sends
    original_write(self, step, kind, scalars)
    if kind == "train" and step == 2 and not sent:
      sent.append(step)
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(MetricWriter, "write", write_then_preempt)
  workdirs = [str(tmp_path / "preempted" / f"seed{seed}") for seed in SEEDS]
  stopped = seeds.train_and_evaluate_seeds(config, SEEDS, workdirs, dataset)
  assert {(r.signal, r.stopped_at) for r in stopped} in ({(signal.SIGTERM, 2)},
                                                         {(signal.SIGTERM, 3)})
  assert not any(os.path.exists(os.path.join(w, "summary.json")) for w in workdirs)
  monkeypatch.setattr(MetricWriter, "write", original_write)
  resumed = seeds.train_and_evaluate_seeds(config, SEEDS, workdirs, dataset)
  for result, workdir, reference in zip(resumed, workdirs, straight):
    assert result.finished
    for a, b in zip(_final_params(reference), _final_params(workdir)):
      np.testing.assert_array_equal(a, b)
    evals = [[(r["epoch"], r["top1"]) for r in read_metrics(d, "eval")] for d in (reference, workdir)]
    assert evals[0] == evals[1] and [e for e, _ in evals[0]] == [1, 2]
  # Finished seeds are reported, not retrained.
  again = seeds.train_and_evaluate_seeds(config, SEEDS, workdirs, dataset)
  assert [r.best_top1 for r in again] == [r.best_top1 for r in resumed]
