"""WORKDIR/events.jsonl: what happened to a run, one JSON line per event, appended by process 0
and flushed to disk at once (a kill -9 loses at most the line being written).

Strict JSON: a non-finite float (a skipped step's loss) is null. Kinds (every row has `event`, `t` = unix time, `pid`): start, restore (step, requested),
fallback (step, error, moved_to), superseded (steps, moved_to), ready (step, startup_s),
first_step (step, seconds: the compile), progress (step, steps, step_s: on log steps),
save (step, blocked_s, reason), skipped (step, loss, grad_norm, skipped_steps), preempted
(step, signal), exit (step, status, reason). `skyreels_jax.tools.goodput` reads them.
"""

from __future__ import annotations

import json
import os
import time

import jax

from skyreels_jax.train.metrics import json_float

FILENAME = "events.jsonl"


class EventLog:

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, FILENAME)
    self.enabled = jax.process_index() == 0

  def log(self, event: str, **fields) -> None:
    if not self.enabled:
      return
    row = {"event": event, "t": time.time(), "pid": os.getpid(),
           **{k: json_float(v) if isinstance(v, float) else v for k, v in fields.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())


def read_events(workdir: str) -> list[dict]:
  """The rows of WORKDIR/events.jsonl; a line cut short by a kill is skipped."""
  path = os.path.join(workdir, FILENAME)
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and "event" in row and "t" in row:
        rows.append(row)
  return rows
