"""The device mesh and logical-axis sharding, both from the config (data, not code).

Mesh axes are fixed: (data, fsdp, sequence, tensor). Parameters carry logical axis names
(embed, heads, mlp, layers, ...); `config.logical_axis_rules` maps them to mesh axes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from skyreels_jax.config import MESH_AXES, mesh_shape


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules(config) -> tuple:
  return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
               for k, v in config.logical_axis_rules)


def logical_to_mesh(spec: tuple, axis_rules) -> P:
  """A tuple of logical names -> a PartitionSpec, each mesh axis used at most once."""
  table = dict(axis_rules)
  used, out = set(), []
  for name in spec:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def state_shardings(abstract_tree: Any, mesh: Mesh, axis_rules) -> Any:
  """NamedShardings for a tree whose leaves are nnx Variables (logical `out_sharding`
  metadata) or arrays (replicated)."""
  def one(x):
    names = getattr(x, "out_sharding", None) if isinstance(x, nnx.Variable) else None
    spec = logical_to_mesh(names, axis_rules) if names else P()
    return NamedSharding(mesh, spec)
  return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, axis_rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1), axis_rules))


def data_parallel_size(mesh: Mesh, axis_rules) -> int:
  spec = logical_to_mesh(("batch",), axis_rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
