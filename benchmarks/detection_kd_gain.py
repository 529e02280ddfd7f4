"""Does KD++ from a trained tiny teacher beat the detector trained alone at equal
iterations (issue #28)? COCO AP of both on the synthetic shapes, over seeds.

  PYTHONPATH=$PWD python benchmarks/detection_kd_gain.py --root=/tmp/kd_gain \\
      [--num-train 2048] [--num-val 256] [--teacher-iterations 2400] \\
      [--student-iterations 600] [--seeds 0,1,2]

Writes the shapes dataset (kd_jax.data.shapes) with `--num-train` / `--num-val` images
under ROOT/data, trains configs/coco_det.py:smoke's R18micro detector as the teacher for
`--teacher-iterations` (COCO AP after every sixth of them), then for each seed the same
network alone and with KD++ (configs/coco_kd.py det_kd_nd,smoke: KD 1.0, ND 1.0, T 1,
class centres from `--center-images` images) for `--student-iterations`: same seed, data
order and recipe. Recipe: AdamW lr 1e-3, weight decay 1e-4, x0.1 at 5/6 of the run (SGD
at the detectron2 lr diverges from scratch; test_detection_task.py::
test_a_micro_detector_learns_the_shapes). Prints one JSON line per run and one with the
per-seed gains. Finished workdirs under ROOT are reported, not retrained.
"""
import argparse
import json
import os
import statistics

from configs import coco_det, coco_kd
from kd_jax import train
from kd_jax.data import shapes


def recipe(config, data_dir, iterations, periods, eval_every, seed):
  """`config` on the shapes in `data_dir`: `iterations` in `periods` loop epochs, COCO AP
  after every `eval_every` of them and the last."""
  config.data.data_dir, config.data.period = data_dir, iterations // periods
  config.num_epochs, config.eval_every_epochs, config.log_every_steps = periods, eval_every, 100
  config.seed = seed
  config.optim.update(dict(name="adamw", lr=1e-3, weight_decay=1e-4,
                           decay_steps=(iterations * 5 // 6,)))
  return config


def evaluations(workdir):
  """(AP, AP50, AP75) of each evaluation the run logged."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [tuple(round(r[k], 2) for k in ("AP", "AP50", "AP75"))
          for r in records if r["kind"] == "eval"]


def run(root, num_train, num_val, teacher_iterations, student_iterations, seeds,
        center_images):
  data_dir = os.path.join(root, "data")
  if not os.path.isdir(data_dir):
    shapes.write(data_dir, num_train=num_train, num_val=num_val)
  teacher_dir = os.path.join(root, "teacher")
  train.train_and_evaluate(recipe(coco_det.get_config("smoke"), data_dir,
                                  teacher_iterations, 6, 1, 0), teacher_dir)
  print(json.dumps({"run": "teacher", "iterations": teacher_iterations,
                    "AP_AP50_AP75": evaluations(teacher_dir)}), flush=True)
  gains = []
  for seed in seeds:
    final = {}
    for name in ("alone", "kd++"):
      if name == "alone":
        config = coco_det.get_config("smoke")
      else:
        config = coco_kd.get_config("det_kd_nd,smoke")
        config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
        config.method.center_images = center_images
      workdir = os.path.join(root, f"{name}_seed{seed}")
      train.train_and_evaluate(recipe(config, data_dir, student_iterations, 3, 3, seed),
                               workdir)
      final[name] = evaluations(workdir)[-1]
      print(json.dumps({"run": name, "seed": seed, "iterations": student_iterations,
                        "AP_AP50_AP75": final[name]}), flush=True)
    gains.append([round(k - a, 2) for k, a in zip(final["kd++"], final["alone"])])
  mean = [round(statistics.fmean(g[i] for g in gains), 2) for i in range(3)]
  print(json.dumps({"kd++_minus_alone_per_seed": gains, "mean": mean}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--num-train", type=int, default=2048)
  parser.add_argument("--num-val", type=int, default=256)
  parser.add_argument("--teacher-iterations", type=int, default=2400)
  parser.add_argument("--student-iterations", type=int, default=600)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--center-images", type=int, default=64)
  args = parser.parse_args()
  run(args.root, args.num_train, args.num_val, args.teacher_iterations,
      args.student_iterations, [int(s) for s in args.seeds.split(",")], args.center_images)


if __name__ == "__main__":
  main()
