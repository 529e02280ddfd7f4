"""One process of a CPU multi-process JAX job (tests/test_multihost.py runs it).

usage: multihost_worker.py WORKDIR TEACHER_DIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS
NUM_PROCESSES=1 runs the same experiment in a single process, for comparison.
"""
import sys

import jax


def main():
  workdir, teacher_dir, process_id, num_processes, port, local_devices = sys.argv[1:]
  jax.config.update("jax_num_cpu_devices", int(local_devices))
  if int(num_processes) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=int(num_processes), process_id=int(process_id))
  from configs import cifar_cskd  # pylint: disable=g-import-not-at-top
  from kd_jax import train  # pylint: disable=g-import-not-at-top

  config = cifar_cskd.get_config("smoke")
  config.teacher.model, config.teacher.checkpoint, config.teacher.train_epochs = (
      "resnet8", teacher_dir, 0)
  config.data.synthetic_train_size, config.data.synthetic_test_size = 64, 40
  config.batch_size, config.eval_batch_size, config.log_every_steps = 16, 16, 2
  summary = train.train_and_evaluate(config, workdir)
  print("RESULT", jax.process_index(), summary.last_top1, flush=True)


if __name__ == "__main__":
  main()
