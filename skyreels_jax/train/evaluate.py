"""Validation during training (train.eval_every): the held-out set (data.eval_path, or the
data.eval_fraction split of data.path: data/split.py) scored with the trained weights.

Deterministic by construction, so a figure means the same thing at every evaluation, on any
mesh and after a restart: the same batches in record order (loader.make_eval_datasets), every
example at each fixed time of train.eval_timesteps and with each task of the mixture (its
masks; the refiner has no tasks), fixed noise (a key of the batch's position), no caption
dropout. The model sees exactly what training would feed it at that time and task.

Metrics (means over the eval batches, every batch weighing the same):
  eval_loss, eval_loss_video, eval_loss_audio   over every task and time (eval_loss: the
                                                 streams weighted as in training)
  eval_loss_keyframes                            the cascade base's high-res keyframes
  eval_loss_<task>, eval_loss_t<tt>              by task, by time (tt = 100 t, 2 digits)
  eval_loss_<stream>_<task>_t<tt>                the whole grid, per stream
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from skyreels_jax.parallel.mesh import batch_sharding
from skyreels_jax.tasks.examples import EvalPoint

EVAL_KEY = 0x5EED    # the noise of eval batch i: fold_in(key(EVAL_KEY), i), whatever the seed


def eval_tasks(config) -> tuple[str, ...]:
  """The tasks validated: the mixture's tasks with weight (the refiner: its own one)."""
  if config.refiner.enabled:
    return ("refiner",)
  return tuple(n for n, w in config.data.tasks.items() if float(w) > 0)


@dataclasses.dataclass
class Evaluator:
  """Scores params on the held-out batches. `datasets`: {bucket: finite dataset} of this
  process's blocks (each evaluation iterates them anew: the same batches every time; the
  split is read once); `frozen_args`:
  batch -> (frozen weights and empties, their shardings) as the train step takes them;
  `to_global`: a process-local batch -> global arrays."""
  config: Any
  loss_fn: Callable
  datasets: dict
  frozen_args: Callable[[dict], tuple[dict, dict]]
  to_global: Callable[[dict], dict]
  params_sharding: Any
  mesh: Any
  axis_rules: Any
  _jitted: dict = dataclasses.field(default_factory=dict)

  def __call__(self, params) -> dict[str, float]:
    sums: dict[str, float] = {}
    batches = 0
    for _, dataset in sorted(self.datasets.items()):
      for batch in dataset:
        batch = {k: v for k, v in batch.items() if k != "bad_records"}
        out = jax.device_get(self._fn(batch)(params, self.to_global(batch),
                                             self.frozen_args(batch)[0], np.int32(batches)))
        for k, v in out.items():
          sums[k] = sums.get(k, 0.0) + float(v)
        batches += 1
    return summarize({k: v / batches for k, v in sums.items()}, self.config)

  def _fn(self, batch: dict) -> Callable:
    key = tuple(sorted((k, v.shape) for k, v in batch.items()))
    if key not in self._jitted:
      _, args_sharding = self.frozen_args(batch)
      points = [(task, float(t)) for task in eval_tasks(self.config)
                for t in self.config.train.eval_timesteps]
      loss_fn = self.loss_fn

      def evaluate(params, batch, frozen, index):
        rng = jax.random.fold_in(jax.random.key(EVAL_KEY), index)
        out = {}
        for task, t in points:    # one program: every (task, time) of this batch
          _, parts = loss_fn(params, batch, rng, frozen, at=EvalPoint(t, task))
          for stream in ("video", "audio", "keyframes"):   # keyframes: the cascade base's
            if f"loss_{stream}" in parts:
              out[grid_key(stream, task, t)] = parts[f"loss_{stream}"]
        return out

      shard = {k: batch_sharding(self.mesh, v.ndim, self.axis_rules) for k, v in batch.items()}
      self._jitted[key] = jax.jit(evaluate, in_shardings=(self.params_sharding, shard,
                                                          args_sharding, None))
    return self._jitted[key]


def grid_key(stream: str, task: str, t: float) -> str:
  return f"eval_loss_{stream}_{task}_t{int(round(t * 100)):02d}"


def summarize(grid: dict[str, float], config) -> dict[str, float]:
  """The grid of per-stream losses -> every eval_* metric (the module docstring)."""
  f = config.flow
  tasks, times = eval_tasks(config), tuple(float(t) for t in config.train.eval_timesteps)
  weights = {"video": f.video_loss_weight, "audio": f.audio_loss_weight}
  if grid_key("keyframes", tasks[0], times[0]) in grid:
    weights["keyframes"] = config.keyframes.loss_weight
  total = {(task, t): sum(weights[s] * grid[grid_key(s, task, t)] for s in weights)
           for task in tasks for t in times}
  out = dict(grid)
  out["eval_loss"] = float(np.mean(list(total.values())))
  for s in weights:
    out[f"eval_loss_{s}"] = float(np.mean([grid[grid_key(s, task, t)]
                                           for task in tasks for t in times]))
  for task in tasks:
    out[f"eval_loss_{task}"] = float(np.mean([total[(task, t)] for t in times]))
  for t in times:
    out[f"eval_loss_t{int(round(t * 100)):02d}"] = float(np.mean([total[(task, t)]
                                                                  for task in tasks]))
  return out
