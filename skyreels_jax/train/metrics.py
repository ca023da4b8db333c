"""Run metrics: WORKDIR/metrics.jsonl (one JSON object per logged step; strict JSON, a
non-finite value is null), TensorBoard events (tensorboardX, no TensorFlow), optionally
Weights & Biases (train.wandb_project; one W&B run per workdir, resumed with it), and a
console line or the progress bar. Only process 0 writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm


def json_float(value) -> float | None:
  """A float for strict JSON: a non-finite value (a skipped step's loss) becomes null, and
  so does None (nothing to report)."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


class MetricsWriter:

  def __init__(self, workdir: str, *, resume_step: int = 0, config=None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = self._wandb = None
    self.bar = None      # the train command's progress bar (console lines go to it)
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if config is not None and config.train.wandb_project:
      self._wandb = _start_wandb(workdir, config)

  def _truncate_after(self, step: int) -> None:
    """A run killed after its last checkpoint logged steps it will now redo: drop them."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line).get("step", 0) <= step:
          keep.append(line)
      except (json.JSONDecodeError, AttributeError):
        continue
    with open(self.path, "w") as f:
      f.writelines(keep)

  def write(self, step: int, scalars: dict, *, group: str = "train",
            shown: tuple[str, ...] | None = None) -> None:
    """One metrics.jsonl row; TensorBoard scalars under `group/`; a console line of the
    `shown` keys (default: all). A None value is "nothing to report" (a timestep quartile
    no example drew): null in the row, left out of the console; a NaN still shows."""
    if not self.enabled:
      return
    row = {"step": int(step), **{k: json_float(v) for k, v in scalars.items()},
           "time": time.time()}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():   # non-finite values (null in the row) are left out, as in W&B
      if k not in ("step", "time") and v is not None:
        self._tb.add_scalar(f"{group}/{k}", v, int(step))
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({f"{group}/{k}": v for k, v in row.items()
                       if k not in ("step", "time") and v is not None}, step=int(step))
    keys = scalars if shown is None else [k for k in shown if k in scalars]
    keys = [k for k in keys if scalars[k] is not None]
    line = " ".join(f"{k}={float(scalars[k]):.4g}" for k in keys)
    if self.bar is not None and not self.bar.disable:   # a terminal: the bar says it
      self.bar.set_postfix_str(line[:120], refresh=True)
      return
    tqdm.write(f"step {step}: {line}", file=sys.stdout)

  @property
  def tensorboard(self):
    """The TensorBoard writer (None off process 0)."""
    return self._tb

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _start_wandb(workdir: str, config):
  """The W&B run of this workdir: a stable id from its path, so a resumed run continues it
  (W&B drops steps it already has); the config as W&B's config."""
  import wandb  # late: optional logging, imported only when a project is set
  os.environ.setdefault("WANDB_SILENT", "true")     # its banner would flood the console
  workdir = os.path.abspath(workdir)
  return wandb.init(project=config.train.wandb_project, mode=config.train.wandb_mode,
                    dir=workdir, id=hashlib.sha1(workdir.encode()).hexdigest()[:16],
                    name=os.path.basename(workdir), resume="allow",
                    config=json.loads(config.to_json_best_effort()))
