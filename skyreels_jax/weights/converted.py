"""Converted folders (python -m skyreels_jax.tools.convert): a module's variables as orbax,
plus what rebuilds the module.

  DST/params/        the module's variables (orbax), restorable straight into any sharding
  DST/converted.json {kind, source_config, module_config}
  DST/tokenizer/     (text encoders) tokenizer / processor files

Reading `converted.json` is cheap and reads no weights: config validation asks it for shapes.
The family-specific parts (building a module from its module config) come in as a function,
so this layer knows no model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from skyreels_jax.weights import trees

META = "converted.json"


class ConversionError(ValueError):
  """A folder that cannot be converted or restored (missing files, unmapped tensors, another
  kind)."""


class NotConverted(FileNotFoundError, ConversionError):
  """No converted folder where a config or a flag points."""


def hint(kind: str, path: str = "DIR") -> str:
  return (f"run python -m skyreels_jax.tools.convert --kind={kind} --src=HF_FOLDER "
          f"--dst={path}")


def read_meta(path: str, kind: str) -> dict[str, Any]:
  """converted.json of `path`; NotConverted / ConversionError (ValueErrors) naming the
  folder when it is not a `kind` one."""
  if not path:
    raise NotConverted(f"the {kind} weights need a path: {hint(kind)} and set the path to DIR")
  meta = os.path.join(path, META)
  if not os.path.exists(meta):
    raise NotConverted(f"{path!r} is not a converted checkpoint (no {META}): "
                       f"{hint(kind, path)}")
  with open(meta) as f:
    found = json.load(f)
  if found.get("kind") != kind:
    raise ConversionError(f"{path} holds a {found.get('kind')} conversion, not {kind}")
  return found


def plain(value: Any) -> Any:
  """A module config (dataclass, dict, tuples) as JSON values."""
  if dataclasses.is_dataclass(value):
    value = dataclasses.asdict(value)
  return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist")
                               else str(o)))


def save(dst: str, kind: str, module: nnx.Module, *, source_config: dict[str, Any],
         module_config: Any) -> dict[str, Any]:
  """Writes `module`'s variables (params and buffers, e.g. latent mean / std) and the meta."""
  os.makedirs(dst, exist_ok=True)
  target = os.path.abspath(os.path.join(dst, "params"))
  if os.path.exists(target):
    shutil.rmtree(target)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(target, nnx.to_pure_dict(nnx.state(module)))
  meta = {"kind": kind, "source_config": source_config, "module_config": plain(module_config)}
  with open(os.path.join(dst, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def restore(path: str, kind: str, build: Callable[[dict[str, Any]], nnx.Module],
            shardings: Callable[[Any], Any] | None = None) -> nnx.Module:
  """The module of a converted folder: `build(module_config)` run abstractly, then filled.
  `shardings(abstract_state) -> shardings tree` places the arrays as they are read (default:
  the default device). Logs what it loaded."""
  meta = read_meta(path, kind)
  abstract = nnx.eval_shape(lambda: build(meta["module_config"]))
  graphdef, state = nnx.split(abstract)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.to_pure_dict(state))
  if shardings is not None:
    target = trees.with_shardings(target, shardings(target))
  with ocp.StandardCheckpointer() as ckpt:
    values = ckpt.restore(os.path.abspath(os.path.join(path, "params")), target)
  logging.info("restored %s from %s: %s", kind, path, trees.summary(values))
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)
