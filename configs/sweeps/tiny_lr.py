"""Learning rate x warm-up on the tiny config: 4 runs, small enough for a CPU.

  python -m launch.sweep --sweep=configs/sweeps/tiny_lr.py --root=DIR \
      -- --config.data.path=DATA --config.train.steps=200
  python -m launch.sweep --summarize --root=DIR
"""

from configs.sweeps import product

BASE = "configs/tiny.py"


def sweep():
  return product({"optim.lr": [3e-4, 1e-3]}, {"optim.warmup_steps": [10, 50]})
