"""Orbax checkpoints: the train state, the data iterator position and run metadata, saved
together at each step so a preempted run resumes exactly where it was.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous; every
process takes part, and a step's folder appears under its final name only once every process
has written its part (orbax commits by renaming a temporary folder; a kill leaves only the
temporary one, removed at the next start). Restores put each array straight into the
sharding of the abstract target, so a checkpoint restores onto any mesh. Sampling restores
only the EMA params. Checkpoints that cannot be restored, or that a `restore_step` makes
obsolete, are moved aside (`move_aside`), never deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from skyreels_jax.weights import runs


class Checkpointer:

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True,
               owner: bool = False):
    """`owner`: the run that writes here (the trainer) removes temporary folders left by a
    killed save at start; a reader (sampling while it trains) must not touch them."""
    self.directory = runs.checkpoint_dir(workdir)
    self.workdir = os.path.abspath(workdir)
    self.manager = runs.manager(workdir, max_to_keep=max_to_keep, async_save=async_save,
                                owner=owner)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def move_aside(self, steps: list[int], folder: str) -> str:
    """Moves checkpoints/<step> for each step to WORKDIR/<folder>/<step> (a new name if that
    exists); process 0 moves, every process waits for it. Returns the destination folder."""
    dest = os.path.join(self.workdir, folder)
    if jax.process_index() == 0:
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        target = os.path.join(dest, str(step))
        if os.path.exists(target):
          target += f"-{int(time.time())}"
        shutil.move(os.fspath(self.directory / str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"move_aside_{folder}_{'_'.join(map(str, steps))}")
    self.manager.reload()
    return dest

  def save(self, step: int, state: Any, data_iterator=None, meta: dict | None = None,
           force: bool = False) -> None:
    items = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(meta or {})}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
    """Restores the whole state into the shardings carried by `abstract_state` and, when
    given, moves `data_iterator` to the saved position."""
    items = {"state": ocp.args.PyTreeRestore(item=abstract_state,
                                             restore_args=runs.restore_args(abstract_state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_subtree(self, step: int, key: str, abstract: Any) -> Any:
    """Restores only state[key] (e.g. the EMA params)."""
    return runs.restore_subtree(self.manager, step, key, abstract)

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
