"""The iteration schedule of detection runs against a transcription of detectron2's."""
import bisect

import numpy as np

from kd_jax import step as step_lib


def detectron2_lr(iteration, base_lr, steps, max_iter, warmup_iters, warmup_factor, gamma):
  """solver/build.py build_lr_scheduler: WarmupParamScheduler(MultiStepParamScheduler(
  values=[gamma^k], milestones=steps, num_updates=max_iter), warmup_factor,
  warmup_length=warmup_iters / max_iter, 'linear'), as LRMultiplier evaluates it."""
  where = iteration / max_iter
  value = [gamma ** k for k in range(len(steps) + 1)][
      bisect.bisect_right(steps, int((where + 1e-6) * max_iter))]
  warmup_length = warmup_iters / max_iter
  if where < warmup_length:
    alpha = where / warmup_length
    value *= warmup_factor * (1 - alpha) + alpha
  return base_lr * value


def test_warmup_multistep_is_detectron2s_schedule():
  optim = dict(lr=0.01, momentum=0.9, nesterov=False, weight_decay=1e-4, decay_epochs=(),
               decay_factor=0.1, schedule="warmup_multistep", decay_steps=(120, 160),
               warmup_steps=10, warmup_factor=0.001)
  _, schedule = step_lib.make_optimizer(optim, steps_per_epoch=1, num_epochs=180)
  iterations = np.arange(180)
  expected = [detectron2_lr(i, 0.01, (120, 160), 180, 10, 0.001, 0.1) for i in iterations]
  np.testing.assert_allclose(np.asarray(schedule(iterations)), expected, rtol=1e-6)
