"""Which checkpoint a run resumes from, and what happens when it cannot be restored.

- Newest first. A checkpoint that cannot be restored (a missing or truncated file, unreadable
  metadata) is named, moved to WORKDIR/damaged_checkpoints/ (never deleted) and the next
  newest is tried.
- `restore_step=N` restores exactly N (no fallback: the user chose it). Newer checkpoints are
  moved to WORKDIR/superseded_checkpoints/ so that the run continues from N. A rerun of the
  same command (a launcher's restart) does not go back again: once N was restored and newer
  steps were saved since, the newest one is resumed.
- What is not damage but a different run (another config's shapes, another number of data
  shards) stops before anything compiles, with a message that says what to do.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from skyreels_jax.train.checkpoint import Checkpointer
from skyreels_jax.train.events import EventLog, read_events

DAMAGED = "damaged_checkpoints"
SUPERSEDED = "superseded_checkpoints"


class ResumeError(ValueError):
  """The checkpoints cannot serve this command (a user's choice to change, not damage)."""


def _path_str(path) -> str:
  """'a/b/0/value' for dict, sequence and attribute keys alike (orbax's metadata tree has
  dicts where the state has nnx.Variable / optax NamedTuple attributes)."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def shape_mismatch(metadata: Any, abstract: Any, limit: int = 3) -> list[str]:
  """Differences between a checkpoint's saved tree (orbax metadata) and the abstract state:
  missing or extra tensors, other shapes. Empty when they match."""
  saved = {_path_str(p): tuple(getattr(m, "shape", ()) or ())
           for p, m in jax.tree_util.tree_leaves_with_path(metadata)}
  want = {_path_str(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  out = [f"{k}: saved {saved[k]}, this config {want[k]}" for k in sorted(want)
         if k in saved and saved[k] != want[k]]
  out += [f"{k}: not in the checkpoint" for k in sorted(set(want) - set(saved))]
  out += [f"{k}: only in the checkpoint" for k in sorted(set(saved) - set(want))]
  return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _everyone(ok: bool) -> bool:
  """True when `ok` on every process (a restore that failed anywhere failed)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _already_restored(workdir: str, step: int, newest: int) -> bool:
  """An earlier start honoured restore_step=`step` and the run has saved past it since."""
  return newest > step and any(
      r["event"] == "restore" and r.get("requested") == step for r in read_events(workdir))


def _check_compatible(ckpt: Checkpointer, step: int, abstract: Any, data_shares: int) -> None:
  """Raises ResumeError when checkpoint `step` belongs to another kind of run; any other
  failure to read it (damage) propagates as is."""
  meta = ckpt.read_meta(step)
  saved = (meta.get("process_count"), meta.get("data_shares"))
  if saved[0] is not None and saved != (jax.process_count(), data_shares):
    raise ResumeError(
        f"checkpoint step {step} in {ckpt.directory} was written by {saved[0]} process(es) "
        f"reading the data as {saved[1]} shard(s); this run has {jax.process_count()} reading "
        f"{data_shares}. Each process's data position is saved on its own and cannot be "
        f"remapped: resume with the process count and mesh of that run, or start a new run "
        f"directory")
  diff = shape_mismatch(ckpt.manager.item_metadata(step)["state"], abstract)
  if diff:
    raise ResumeError(f"checkpoint step {step} in {ckpt.directory} does not match this "
                      f"config ({'; '.join(diff)}): use the config it was trained with, or a "
                      f"new run directory")


def restore(ckpt: Checkpointer, abstract: Any, iterator, *, restore_step: int,
            data_shares: int, events: EventLog,
            say: Callable[[str], None]) -> tuple[int, Any] | tuple[None, None]:
  """(step, state) of the checkpoint to resume from, or (None, None) when there is none.
  `abstract`: the state's ShapeDtypeStructs with their target shardings."""
  steps = ckpt.all_steps()
  if restore_step >= 0 and restore_step not in steps:
    raise ResumeError(f"--restore_step={restore_step}: no such checkpoint in {ckpt.directory} "
                      f"(saved steps: {steps or 'none'})")
  if not steps:
    return None, None
  if restore_step >= 0 and _already_restored(ckpt.workdir, restore_step, steps[-1]):
    say(f"restore_step={restore_step} was applied by an earlier start; resuming the newest "
        f"checkpoint, step {steps[-1]}")
    restore_step = -1
  if restore_step >= 0:
    newer = [s for s in steps if s > restore_step]
    if newer:
      dest = ckpt.move_aside(newer, SUPERSEDED)
      say(f"restoring step {restore_step}: newer checkpoints {newer} moved to {dest}")
      events.log("superseded", steps=newer, moved_to=dest)
    candidates = [restore_step]
  else:
    candidates = steps[::-1]
  for step in candidates:
    try:
      _check_compatible(ckpt, step, abstract, data_shares)
      state, error = ckpt.restore(step, abstract, iterator), None
    except ResumeError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      state, error = None, e
    if _everyone(error is None):
      events.log("restore", step=step, requested=None if restore_step < 0 else restore_step)
      return step, state
    why = first_line(error) if error is not None else "failed on another process"
    if restore_step >= 0:
      raise ResumeError(f"checkpoint step {step} ({ckpt.directory / str(step)}) cannot be "
                        f"restored: {why}")
    dest = ckpt.move_aside([step], DAMAGED)
    say(f"checkpoint step {step} cannot be restored ({why}); moved it to {dest}, trying the "
        "next newest")
    events.log("fallback", step=step, error=why, moved_to=dest)
  raise ResumeError(f"no checkpoint in {ckpt.directory} could be restored (all moved to "
                    f"{ckpt.workdir}/{DAMAGED}); rerun to start from scratch, or restore one "
                    "by hand")
