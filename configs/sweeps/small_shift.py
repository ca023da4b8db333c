"""Timestep shift x audio loss weight on the small config (the first thing to settle before a
pod run of joint audio-video training): 3 x 3 = 9 runs, each with held-out loss.

  python -m launch.sweep --sweep=configs/sweeps/small_shift.py --root=gs://bucket/sweeps/shift \
      --backend=tpu_pod --launcher_arg=--xpk --launcher_arg=--cluster=C \
      --launcher_arg=--workload=shift --launcher_arg=--tpu_type=v5p-64 \
      -- --config.data.path=gs://bucket/data
  python -m launch.sweep --summarize --root=... --metric=eval_loss
"""

from configs.sweeps import fixed, product

BASE = "configs/small.py"


def sweep():
  runs = product({"flow.shift": [1.0, 3.0, 5.0]}, {"flow.audio_loss_weight": [0.5, 1.0, 2.0]})
  # Every run scores the same held-out share at the same steps, so eval_loss compares them.
  return fixed(runs, train__eval_every=1000, data__eval_fraction=0.02, train__steps=20000)
