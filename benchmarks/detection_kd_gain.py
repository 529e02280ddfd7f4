"""Does KD++ from a trained tiny teacher beat the detector trained alone at equal
iterations (issue #28)? COCO AP of both on the synthetic shapes, over paired seeds.

  PYTHONPATH=$PWD python benchmarks/detection_kd_gain.py --root=/tmp/kd_gain \\
      [--num-train 2048] [--num-val 256] [--teacher-iterations 2400] \\
      [--pretrain-iterations 600] [--student-iterations 600] [--seeds 1,2,3,4,5,6]

Writes the shapes dataset (kd_jax.data.shapes) with `--num-train` / `--num-val` images
under ROOT/data, trains configs/coco_det.py:smoke's R18micro detector as the teacher for
`--teacher-iterations` from scratch (seed 0; COCO AP after every sixth of them). Then, as
the paper's students start from ImageNet weights, a shared starting point: the same
network trained alone for `--pretrain-iterations` (seed `--pretrain-seed`), written as a
detectron2 .pkl (faster_rcnn.save_weights) that every student loads
(student.options.weights; 0 iterations: students from scratch, the first attempt's
setting). For each seed, the student alone and with KD++ (configs/coco_kd.py
det_kd_nd,smoke: KD 1.0, ND `--nd-weight`, T 1, class centres from `--center-images`
images) train `--student-iterations` more: same start, seed, data order and recipe.
Recipe: AdamW lr 1e-3, weight decay 1e-4, x0.1 at 5/6 of each run (SGD at the detectron2
lr diverges from scratch; test_detection_task.py::test_a_micro_detector_learns_the_shapes).
Prints one JSON line per run and one with the per-seed gains, and writes all of them to
ROOT/result.json. Finished workdirs under ROOT are reported, not retrained.
"""
import argparse
import json
import os
import statistics

from configs import coco_det, coco_kd
from kd_jax import checkpoint, train
from kd_jax.data import shapes
from kd_jax.detection import faster_rcnn


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


def pretrained_weights(root, data_dir, iterations, seed):
  """The students' shared start: the detector alone after `iterations` (seed `seed`), as
  a detectron2 .pkl; '' (from scratch) for 0 iterations."""
  if not iterations:
    return ""
  config = recipe(coco_det.get_config("smoke"), data_dir, iterations, 1, 1, seed)
  workdir = os.path.join(root, "pretrain")
  train.train_and_evaluate(config, workdir)
  print(json.dumps({"run": "pretrain", "seed": seed, "iterations": iterations,
                    "AP_AP50_AP75": evaluations(workdir)}), flush=True)
  path = os.path.join(workdir, "model_final.pkl")
  if not os.path.isfile(path):
    model = checkpoint.load_teacher(workdir, config.student.model, len(shapes.CLASSES),
                                    options=dict(config.student.options))
    faster_rcnn.save_weights(model, path)
  return path


def run(root, num_train=2048, num_val=256, teacher_iterations=2400, student_iterations=600,
        seeds=(1, 2, 3, 4, 5, 6), center_images=64, pretrain_iterations=600, pretrain_seed=100,
        nd_weight=1.0):
  """Trains the teacher, the shared start and the paired students under `root`; returns
  (and writes to root/result.json) {"teacher": [(AP, AP50, AP75) per evaluation],
  "alone", "kd++": [(AP, AP50, AP75) per seed], "gains": per seed, "mean"}."""
  data_dir = os.path.join(root, "data")
  shapes.ensure(data_dir, num_train=num_train, num_val=num_val)
  teacher_dir = os.path.join(root, "teacher")
  train.train_and_evaluate(recipe(coco_det.get_config("smoke"), data_dir,
                                  teacher_iterations, 6, 1, 0), teacher_dir)
  result = {"teacher": evaluations(teacher_dir), "alone": [], "kd++": []}
  print(json.dumps({"run": "teacher", "iterations": teacher_iterations,
                    "AP_AP50_AP75": result["teacher"]}), flush=True)
  weights = pretrained_weights(root, data_dir, pretrain_iterations, pretrain_seed)
  for seed in seeds:
    for name in ("alone", "kd++"):
      if name == "alone":
        config = coco_det.get_config("smoke")
      else:
        config = coco_kd.get_config("det_kd_nd,smoke")
        config.teacher.checkpoint, config.teacher.train_epochs = teacher_dir, 0
        config.method.center_images, config.method.nd_weight = center_images, nd_weight
      config.student.options.weights = weights
      workdir = os.path.join(root, f"{name}_seed{seed}")
      train.train_and_evaluate(recipe(config, data_dir, student_iterations, 3, 3, seed),
                               workdir)
      result[name].append(evaluations(workdir)[-1])
      print(json.dumps({"run": name, "seed": seed, "iterations": student_iterations,
                        "AP_AP50_AP75": result[name][-1]}), flush=True)
  result["gains"] = [[round(k - a, 2) for k, a in zip(kd, alone)]
                     for kd, alone in zip(result["kd++"], result["alone"])]
  result["mean"] = [round(statistics.fmean(g[i] for g in result["gains"]), 2)
                    for i in range(3)]
  print(json.dumps({"kd++_minus_alone_per_seed": result["gains"], "mean": result["mean"]}),
        flush=True)
  with open(os.path.join(root, "result.json"), "w") as f:
    json.dump(result, f)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--num-train", type=int, default=2048)
  parser.add_argument("--num-val", type=int, default=256)
  parser.add_argument("--teacher-iterations", type=int, default=2400)
  parser.add_argument("--pretrain-iterations", type=int, default=600)
  parser.add_argument("--pretrain-seed", type=int, default=100)
  parser.add_argument("--student-iterations", type=int, default=600)
  parser.add_argument("--seeds", default="1,2,3,4,5,6")
  parser.add_argument("--center-images", type=int, default=64)
  parser.add_argument("--nd-weight", type=float, default=1.0)
  args = parser.parse_args()
  run(args.root, args.num_train, args.num_val, args.teacher_iterations,
      args.student_iterations, [int(s) for s in args.seeds.split(",")], args.center_images,
      args.pretrain_iterations, args.pretrain_seed, args.nd_weight)


if __name__ == "__main__":
  main()
