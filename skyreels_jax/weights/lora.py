"""LoRA adapters over a tree of weights (train.lora): W' = W + (alpha / rank) A B for every
kernel whose name matches one of the target regexes.

A kernel (..., in, out) (a leading `layers` axis for scanned blocks) gets A (..., in, rank)
and B (..., rank, out). B starts at zero, so a fresh adapter leaves the model unchanged; A
starts random (std 1 / sqrt(in)). The adapters' logical axes follow the kernel's: A keeps
its `in` axis, B its `out` axis, the rank axis is unsharded. The base weights are not part of
the adapters: they stay frozen, outside the optimizer (train/), and can be kept in bf16.

`merge(base, adapters, scale)` is the model's params with every adapter folded in: done once
(merged sampling) or inside the traced step (training, unmerged sampling).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.weights import match

A, B = "lora_a", "lora_b"


def targets(params: nnx.State, patterns: Sequence[str]) -> list[tuple]:
  """Paths of the kernels (2+ dims, named `kernel`) whose '/'-joined name matches."""
  regexes = [re.compile(p) for p in patterns]
  out = []
  for path, v in nnx.to_flat_state(params):
    name = match.name(path)
    if str(path[-1]) == "kernel" and len(v.shape) >= 2 and any(r.search(name)
                                                                 for r in regexes):
      out.append(tuple(path))
  return out


def abstract_adapters(params: nnx.State, patterns: Sequence[str], rank: int,
                      dtype=jnp.float32) -> nnx.State:
  """The adapters' shapes and logical axes (nnx.Param leaves of ShapeDtypeStructs)."""
  flat = dict((tuple(p), v) for p, v in nnx.to_flat_state(params))
  rows = []
  for path in targets(params, patterns):
    v = flat[path]
    shape = tuple(v.shape)
    axes = tuple(getattr(v, "out_sharding", None) or (None,) * len(shape))
    with nnx.use_eager_sharding(False):    # placed later, by the logical rules
      a = nnx.Param(jax.ShapeDtypeStruct(shape[:-1] + (rank,), dtype),
                    out_sharding=axes[:-1] + (None,))
      b = nnx.Param(jax.ShapeDtypeStruct(shape[:-2] + (rank, shape[-1]), dtype),
                    out_sharding=axes[:-2] + (None, axes[-1]))
    rows += [(path + (A,), a), (path + (B,), b)]
  return nnx.from_flat_state(rows)


def init_adapters(abstract: nnx.State, key: jax.Array) -> nnx.State:
  """A random (std 1 / sqrt(in)), B zero: traceable (run under jit with out_shardings)."""
  rows = []
  flat = list(nnx.to_flat_state(abstract))
  keys = jax.random.split(key, max(len(flat), 1))
  for (path, v), k in zip(flat, keys):
    shape, dtype = v.shape, v.dtype
    if path[-1] == A:
      value = jax.random.normal(k, shape, dtype) / math.sqrt(shape[-2])
    else:
      value = jnp.zeros(shape, dtype)
    rows.append((path, v.replace(value)))
  return nnx.from_flat_state(rows)


def merge(base: nnx.State, adapters: nnx.State, scale: float, dtype=None) -> nnx.State:
  """`base` with W + scale * A @ B for every adapted kernel; every leaf in `dtype` (default:
  the adapters' dtype, the model's param dtype)."""
  pairs: dict[tuple, dict[str, Any]] = {}
  for path, v in nnx.to_flat_state(adapters):
    pairs.setdefault(tuple(path[:-1]), {})[path[-1]] = v.get_value()
  if dtype is None:
    dtype = next(iter(pairs.values()))[A].dtype if pairs else None
  rows = []
  for path, v in nnx.to_flat_state(base):
    w = v.get_value()
    w = w if dtype is None else w.astype(dtype)
    ab = pairs.get(tuple(path))
    if ab is not None:
      w = w + (scale * jnp.matmul(ab[A], ab[B])).astype(w.dtype)
    rows.append((path, v.replace(w)))
  return nnx.from_flat_state(rows)


def typed(abstract: nnx.State, dtype) -> nnx.State:
  """Abstract params (Variables of ShapeDtypeStructs) in another dtype: the base's."""
  return jax.tree.map(lambda x: x.replace(jax.ShapeDtypeStruct(x.shape, dtype)), abstract,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def scale(rank: int, alpha: float) -> float:
  """alpha / rank, alpha 0 meaning the rank (scale 1): train.lora's rule."""
  return (alpha or rank) / rank


def count(adapters: nnx.State) -> int:
  return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(adapters))
