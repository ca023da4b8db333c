"""Orbax checkpoints: the train state, the data iterator position and run metadata, saved
together at each step so a preempted run resumes exactly where it was.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Saves are asynchronous; every
process takes part. Restores put each array straight into the sharding of the abstract
target, so a checkpoint restores onto any mesh. Sampling restores only the EMA params.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from etils import epath


def _array_registry():
  """Default handlers, but replicated arrays are written from one replica: orbax's
  replica-parallel path jit-compiles a slice per array shape (hundreds of compiles at the
  first save of a replicated model) for a speed-up that only matters at pod scale."""
  from orbax.checkpoint._src.serialization import type_handler_registry as registry
  handlers = [(ty, ocp.type_handlers.ArrayHandler(use_replica_parallel=False))
              if ty is jax.Array else (ty, h) for ty, h in registry._DEFAULT_TYPE_HANDLERS]
  return registry.create_type_handler_registry(*handlers)


def _restore_args(abstract: Any) -> Any:
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                     dtype=x.dtype), abstract)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """Abstract leaves (ShapeDtypeStruct) carrying the target shardings."""
  def one(x, s):
    if isinstance(x, nnx.Variable):
      return x.replace(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(one, abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Checkpointer:

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(os.path.abspath(workdir)) / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_array_registry()),
            "data": grain.checkpoint.CheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

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
                                             restore_args=_restore_args(abstract_state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_subtree(self, step: int, key: str, abstract: Any) -> Any:
    """Restores only state[key] (e.g. the EMA params for sampling)."""
    item = {key: abstract}
    args = ocp.args.PyTreeRestore(item=item, restore_args=_restore_args(item),
                                  partial_restore=True)
    return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"][key]

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
