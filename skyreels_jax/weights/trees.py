"""Trees of weights: abstract targets with shardings, placement onto a mesh, summaries."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import nnx


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """Abstract leaves (ShapeDtypeStruct, or Variables holding them) carrying the target
  shardings: what a restore reads into."""
  def one(x, s):
    if _is_var(x):
      return x.replace(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(one, abstract, shardings, is_leaf=_is_var)


def place(tree: Any, shardings: Any) -> Any:
  """Host (or single-device) arrays onto the mesh of `shardings`. Every process holds the
  same values, so each builds the shards its devices hold from its own copy (multi-host
  safe: no process needs another's data)."""
  def one(x, sharding):
    host = np.asarray(x[...] if _is_var(x) else x)
    arr = jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return x.replace(arr) if _is_var(x) else arr
  return jax.tree.map(one, tree, shardings, is_leaf=_is_var)


def summary(tree: Any) -> str:
  """'N arrays, P values, B MiB': what a restore or a placement brought in."""
  leaves = [x[...] if _is_var(x) else x for x in jax.tree.leaves(tree, is_leaf=_is_var)]
  values = sum(math.prod(x.shape) for x in leaves)
  size = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)
  return f"{len(leaves)} arrays, {values:,} values, {size / 2**20:.1f} MiB"
