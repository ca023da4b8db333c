"""A training run's checkpoints, as the trainer writes them (train/checkpoint.py):
WORKDIR/checkpoints/<step>/{state, data, meta}. Reading a subtree of the state (the EMA for
sampling, the params to start another run from) needs no optimizer and no trainer."""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.serialization import type_handler_registry as registry


def array_registry():
  """Default handlers, but replicated arrays are written from one replica: orbax's
  replica-parallel path jit-compiles a slice per array shape (hundreds of compiles at the
  first save of a replicated model) for a speed-up that only matters at pod scale."""
  handlers = [(ty, ocp.type_handlers.ArrayHandler(use_replica_parallel=False))
              if ty is jax.Array else (ty, h) for ty, h in registry._DEFAULT_TYPE_HANDLERS]
  return registry.create_type_handler_registry(*handlers)


def item_handlers() -> dict[str, Any]:
  """The items of one checkpoint step."""
  return {"state": ocp.PyTreeCheckpointHandler(type_handler_registry=array_registry()),
          "data": grain.checkpoint.CheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler()}


def restore_args(abstract: Any) -> Any:
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                     dtype=x.dtype), abstract)


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(os.path.abspath(workdir)) / "checkpoints"


def manager(workdir: str, *, max_to_keep: int = 3, async_save: bool = False,
            owner: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoint manager. `owner` (the trainer) removes temporary folders left by a
  killed save; a reader must not touch them."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=owner)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=item_handlers())


def restore_subtree(mngr: ocp.CheckpointManager, step: int, key: str, abstract: Any) -> Any:
  """state[key] of checkpoint `step` (e.g. "ema"), into the shardings `abstract` carries."""
  item = {key: abstract}
  args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args(item),
                                partial_restore=True)
  return mngr.restore(step, args=ocp.args.Composite(state=args))["state"][key]


def newest_step_on_disk(workdir: str) -> int:
  """The newest checkpoint step folder of a run (-1: none); a directory listing, no orbax."""
  folder = checkpoint_dir(workdir)
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
  return max(steps, default=-1)


def has_checkpoint(workdir: str) -> bool:
  return newest_step_on_disk(workdir) >= 0


def read(workdir: str, key: str, abstract: Any, *, step: int | None = None) -> tuple[int, Any]:
  """(step, state[key]) of a run's latest (or given) checkpoint; FileNotFoundError when the
  run has none."""
  if not checkpoint_dir(workdir).exists():
    raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
  mngr = manager(workdir)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    return step, restore_subtree(mngr, step, key, abstract)
  finally:
    mngr.close()


# What a run started from (train/init.py): {source, step, weights, loaded, new, ignored, ...}.
INIT_REPORT = "init_report.json"


def read_init_report(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, INIT_REPORT)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: the run did not start from another run")
  with open(path) as f:
    return json.load(f)


def read_base(workdir: str, abstract: Any) -> Any:
  """A LoRA run's base weights: the checkpoint its init_report.json recorded (source run,
  step, ema | params), into the shardings and dtypes `abstract` carries."""
  report = read_init_report(workdir)
  source = report["source"]
  if not checkpoint_dir(source).exists():
    raise FileNotFoundError(f"the base of {workdir} ({source}, step {report['step']}) is "
                            "gone: a LoRA run needs it on every resume and at sampling")
  return read(source, report["weights"], abstract, step=int(report["step"]))[1]
