"""Runs configs x pairs x seeds in ROOT/<method>/<pair>/seed<N>.

  python -m kd_jax.tools.sweep --configs=configs/cifar_kd.py,configs/cifar_cskd.py \
      --pairs=res56_res20,res32x4_res8x4 --seeds=0,1,2 --root=runs \
      [--dry_run] [--print_commands] [--extra='--config.num_epochs=2'] \
      [--noseeds_in_one_program]

The seeds of one config x pair train together in one main.py program (`--seeds=...`,
kd_jax.seeds) when its data lives on the device (CIFAR); host-fed configs (ImageNet),
a single unfinished seed, and --noseeds_in_one_program (say, to spread single seeds over
machines) get one main.py per seed (`--config.seed=N`). Either way each seed has its own
workdir ROOT/<method>/<pair>/seed<N>.

Runs go one after another from the repository root, each command printed first. A run with
summary.json is finished and skipped; an unfinished one resumes (main.py restarts from its
checkpoint). A failing run is reported and the sweep goes on; the exit status is 1 if any
failed. --print_commands prints only the commands, one per line, for a launch script to
spread over machines (`python` unless --python is given; paths relative to the repo root).
A "pair" is whatever the config file's get_config takes: a pair of
configs/cifar_common.PAIRS, 'smoke', or a model name for configs/cifar_ce.py. Configs
whose argument is 'VARIANT,PAIR' (cifar_nd.py, cifar_ls.py) are named FILE:VARIANT, e.g.
--configs=configs/cifar_nd.py:dkd_nd; the run then gets --config=FILE:VARIANT,PAIR and
<method> is the file's stem, plus '.VARIANT' when given (cifar_nd.dkd_nd). The folder names
only place the runs: kd_jax.tools.summarize labels each run by its config ('DKD++').
"""
import dataclasses
import importlib.util
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Job:
  """One main.py of the sweep: one seed, or several seeds in one program."""
  config: str  # config file, relative to the repo root when inside it
  pair: str
  seeds: tuple[int, ...]
  pair_dir: str  # ROOT/<method>/<pair>, relative to the repo root when inside it
  variant: str = ""  # prefix of the config argument: 'VARIANT,PAIR'

  @property
  def arg(self):
    return f"{self.variant},{self.pair}" if self.variant else self.pair

  def seed_workdir(self, seed):
    return os.path.join(self.pair_dir, f"seed{seed}")

  @property
  def pending(self):
    """The seeds without summary.json (all of them when every one has it)."""
    pending = [seed for seed in self.seeds if not os.path.exists(
        os.path.join(REPO_ROOT, self.seed_workdir(seed), "summary.json"))]
    return tuple(pending)

  @property
  def workdir(self):
    return self.seed_workdir(self.seeds[0]) if len(self.seeds) == 1 else self.pair_dir

  def command(self, python, extra=()):
    seeds = self.pending or self.seeds
    config = f"--config={self.config}:{self.arg}"
    if len(seeds) == 1:
      return [python, "main.py", config, f"--workdir={self.seed_workdir(seeds[0])}",
              f"--config.seed={seeds[0]}", *extra]
    return [python, "main.py", config, f"--workdir={self.pair_dir}",
            f"--seeds={','.join(map(str, seeds))}", *extra]

  @property
  def finished(self):
    return not self.pending


def repo_path(path):
  """`path` (relative to the current directory) as main.py will see it from the repo root."""
  absolute = os.path.abspath(path)
  relative = os.path.relpath(absolute, REPO_ROOT)
  return absolute if relative.startswith("..") else relative


def find_config(path):
  """A config file given relative to the current directory or to the repo root."""
  for candidate in (path, os.path.join(REPO_ROOT, path)):
    if os.path.isfile(candidate):
      return repo_path(candidate)
  raise ValueError(f"config file {path!r} not found (here or in {REPO_ROOT})")


def check_config(config, arg):
  """Builds `config` for `arg` now, so a typo fails before hours of earlier runs; returns
  it."""
  sys.path.insert(0, REPO_ROOT)  # config files import `configs.cifar_common`
  try:
    spec = importlib.util.spec_from_file_location("_sweep_config",
                                                  os.path.join(REPO_ROOT, config))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{config}:{arg}: {type(error).__name__}: {error}") from error
  finally:
    sys.path.remove(REPO_ROOT)


def device_fed(config, arg):
  """Whether the data of `config` for `arg` lives on the device (seeds in one program)."""
  from kd_jax.data import feeders  # pylint: disable=g-import-not-at-top
  dataset = check_config(config, arg).data.dataset
  return feeders.DATASETS.get(dataset, (None, None))[1] is feeders.DeviceFeeder


def make_jobs(configs, pairs, seeds, root, seeds_in_one_program=False):
  """The product configs x pairs x seeds, in that nesting order; with
  `seeds_in_one_program`, one job for all the seeds of a device-fed config x pair."""
  jobs = []
  seeds = [int(seed) for seed in seeds]
  for entry in configs:
    config, _, variant = entry.partition(":")
    config = find_config(config)
    method = os.path.splitext(os.path.basename(config))[0] + (f".{variant}" if variant else "")
    for pair in pairs:
      pair_dir = repo_path(os.path.join(root, method, pair))
      arg = f"{variant},{pair}" if variant else pair
      together = seeds_in_one_program and len(seeds) > 1 and device_fed(config, arg)
      for group in [seeds] if together else [[seed] for seed in seeds]:
        jobs.append(Job(config=config, pair=pair, seeds=tuple(group), pair_dir=pair_dir,
                        variant=variant))
  return jobs


def run_sweep(jobs, python, extra=(), dry_run=False, out=sys.stdout):
  """Runs the unfinished `jobs` in turn; returns the failed ones."""
  failed = []
  for index, job in enumerate(jobs, 1):
    prefix = f"[{index}/{len(jobs)}]"
    if job.finished:
      print(f"{prefix} skip (finished): {job.workdir}", file=out, flush=True)
      continue
    command = job.command(python, extra)
    print(f"{prefix} {shlex.join(command)}", file=out, flush=True)
    if dry_run:
      continue
    status = subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
    if status:
      print(f"{prefix} FAILED (exit status {status}): {job.workdir}", file=out, flush=True)
      failed.append(job)
  return failed


def define_flags():
  """Flags of the command line only (the tools share names, so not at import)."""
  flags.DEFINE_list("configs", None, "Config files (one method each), FILE or FILE:VARIANT.")
  flags.DEFINE_list("pairs", None, "Config arguments: pair names, 'smoke'...")
  flags.DEFINE_list("seeds", ["0"], "Seeds (integers); each sets --config.seed.")
  flags.DEFINE_bool("seeds_in_one_program", True, "Train the seeds of a config x pair "
                    "together (main.py --seeds) when its data lives on the device.")
  flags.DEFINE_string("root", "runs", "Workdirs go to ROOT/<method>/<pair>/seed<N>.")
  flags.DEFINE_string("extra", "", "More main.py flags for every run (shell-quoted).")
  flags.DEFINE_bool("dry_run", False, "Print the commands and skips, run nothing.")
  flags.DEFINE_bool("print_commands", False, "Print only the commands still to run, one per "
                    "line (skips go to stderr).")
  flags.DEFINE_string("python", "", "Interpreter in the commands; default: this one when "
                      "running, `python` with --print_commands.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.configs or not FLAGS.pairs:
    raise app.UsageError("--configs and --pairs are required")
  try:
    jobs = make_jobs(FLAGS.configs, FLAGS.pairs, FLAGS.seeds, FLAGS.root,
                     FLAGS.seeds_in_one_program)
    for config, arg in dict.fromkeys((job.config, job.arg) for job in jobs):
      check_config(config, arg)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  extra = shlex.split(FLAGS.extra)
  if FLAGS.print_commands:
    for job in jobs:
      if job.finished:
        print(f"skip (finished): {job.workdir}", file=sys.stderr)
      else:
        print(shlex.join(job.command(FLAGS.python or "python", extra)))
    return
  failed = run_sweep(jobs, FLAGS.python or sys.executable, extra, FLAGS.dry_run)
  if failed:
    print(f"{len(failed)} of {len(jobs)} runs failed:", file=sys.stderr)
    for job in failed:
      print(f"  {job.workdir}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
