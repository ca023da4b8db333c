"""Shared pieces of the sequence-parallel strategies: padding main tokens to a multiple of
the `sequence` axis and the shard_map partition specs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def pad_to(x: jax.Array | None, n: int, value=0):
  """Pads axis 1 of x up to a multiple of n."""
  if x is None or x.shape[1] % n == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, n - x.shape[1] % n)
  return jnp.pad(x, pad, constant_values=value)


def specs(spec):
  """(sequence-sharded tokens, replicated tokens, sharded mask, replicated mask) specs."""
  b = tuple(spec.batch_axes) or None
  s, h = spec.sequence_axis, spec.head_axis
  return P(b, s, h, None), P(b, None, h, None), P(b, s), P(b, None)


def check_heads(num_local_heads: int, n: int, strategy: str):
  if num_local_heads % n:
    raise ValueError(f"attention={strategy}: {num_local_heads} heads per tensor shard do not "
                     f"divide over the sequence axis of size {n} (model.num_heads)")


def padded_main(q, k, v, kv_mask, n):
  """Main tokens padded to a multiple of n; padded keys are masked out."""
  sq = q.shape[1]
  q = pad_to(q, n)
  if k is not None:
    k, v, kv_mask = pad_to(k, n), pad_to(v, n), pad_to(kv_mask, n, False)
  return q, k, v, kv_mask, sq


def shard_map_args(spec, q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask):
  """The present inputs as a dict, with their shard_map in_specs: main tokens sharded on
  `sequence`, the context replicated."""
  tok, rep, tok_mask, rep_mask = specs(spec)
  args = {"q": q, "k": k, "v": v, "m": kv_mask, "qc": q_ctx, "kc": k_ctx, "vc": v_ctx,
          "cm": ctx_mask}
  args = {key: x for key, x in args.items() if x is not None}
  table = {"q": tok, "k": tok, "v": tok, "m": tok_mask, "qc": rep, "kc": rep, "vc": rep,
           "cm": rep_mask}
  out_specs = (tok, rep if q_ctx is not None else None)
  return args, {key: table[key] for key in args}, out_specs
