"""What the checksum manifest adds to a checkpoint save (kd_jax.manifest, issue #29).

  python -m benchmarks.checkpoint_save [--model resnet32x4] [--classes 100] [--repeats 7]

Saves the train state of `--model` (params, BatchNorm statistics, SGD momentum: what
kd_jax.checkpoint.RunCheckpoints saves every epoch) with kd_jax's manager (state + progress
+ manifest) and with the same Orbax manager without the manifest item, alternating, each
save timed from `save` to `wait_until_finished` (the whole async write, checksumming
included), and the checksumming alone (CRC-32, and SHA-256 for comparison) timed again
on the step just written. Prints JSON
lines: each pair's times and, last, the median ratios with/without and checksums/plain save
(ratios within one run, since the machine is shared and noisy).
"""
import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="resnet32x4")
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()

  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from configs import cifar_kd  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from kd_jax import checkpoint, manifest, models, step, train  # pylint: disable=g-import-not-at-top

  config = cifar_kd.get_config()  # its optimizer (SGD momentum) and student settings
  optimizer, _ = step.make_optimizer(config.optim, 100, config.num_epochs)
  student = models.create(args.model, args.classes, rngs=nnx.Rngs(0))
  _, state = train.initial_state(config, student, None, optimizer)
  progress = {"best_top1": 1.0, "data_state": None}
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  print(json.dumps({"model": args.model, "state_megabytes": round(size / 2**20, 1)}))

  with tempfile.TemporaryDirectory() as root:
    keep = args.repeats + 2  # no deletion of old steps inside the timed saves
    with_manifest = checkpoint.RunCheckpoints(f"{root}/with", keep=keep)
    plain = ocp.CheckpointManager(
        f"{root}/plain/checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save_plain(number):
      plain.save(number, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))
      plain.wait_until_finished()

    def save_with(number):
      with_manifest.save(number, state, progress)
      with_manifest.manager.wait_until_finished()

    def timed(save, number):
      start = time.perf_counter()
      save(number)
      return time.perf_counter() - start

    timed(save_plain, 0), timed(save_with, 0)  # warm-up: first saves set up Orbax
    ratios, hash_ratios, sha_ratios = [], [], []
    for number in range(1, args.repeats + 1):
      pair = (timed(save_plain, number), timed(save_with, number)) if number % 2 else \
          tuple(reversed((timed(save_with, number), timed(save_plain, number))))
      step_dir = f"{root}/with/checkpoints/{number}"
      start = time.perf_counter()  # the manifest's own work, on the step just written
      manifest.compute(step_dir, skip=(manifest.ITEM,))
      hashing = time.perf_counter() - start
      start = time.perf_counter()  # the same files through SHA-256, for comparison
      for path in manifest._files(step_dir, skip=(manifest.ITEM,)):  # pylint: disable=protected-access
        with open(os.path.join(step_dir, path), "rb") as f:
          hashlib.sha256(f.read()).hexdigest()
      sha256 = time.perf_counter() - start
      ratios.append(pair[1] / pair[0])
      hash_ratios.append(hashing / pair[0])
      sha_ratios.append(sha256 / pair[0])
      print(json.dumps({"save": number, "plain_s": round(pair[0], 4),
                        "with_manifest_s": round(pair[1], 4), "checksums_s": round(hashing, 4),
                        "sha256_s": round(sha256, 4)}))
    with_manifest.close()
    plain.close()
  print(json.dumps({"median_ratio_with_over_plain": round(statistics.median(ratios), 4),
                    "median_checksums_over_plain_save": round(statistics.median(hash_ratios), 4),
                    "median_sha256_over_plain_save": round(statistics.median(sha_ratios), 4),
                    "ratios": [round(r, 3) for r in ratios]}))


if __name__ == "__main__":
  main()
