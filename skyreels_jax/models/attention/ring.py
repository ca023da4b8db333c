"""Ring attention: each device keeps its S/n queries; key/value blocks travel around the
`sequence` axis (ppermute) and are folded in with an online softmax (blockwise.stats /
combine, float32). The replicated context keys are folded in once, locally; context queries
are answered on every device and averaged (pmean) so all replicas hold the same bits.

Memory is O(S / n) per device: a custom VJP keeps only the output and its log-sum-exp, and
the backward pass runs the ring again, the key/value block travelling with its gradient
accumulators (dk, dv), which arrive back at their owner after the last step.

Ordering. The ring is a Python loop (n steps, unrolled) with ONE ppermute per step: K and V
(and dK, dV going back) travel stacked, each step's permute taking the previous one's result.
Every device therefore issues its collectives in one order fixed by data dependence. (Three
independent permutes per step inside a fori_loop deadlocked on simulated CPU devices: the
runtime's threads ran them in different orders.) Each step's permute is issued before the
fold of the block it carries, so the transfer overlaps the compute; the forward pass makes
n - 1 transfers (the last block stays where it is).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from skyreels_jax.models.attention import blockwise
from skyreels_jax.models.attention.common import join
from skyreels_jax.models.attention._sharded import padded_main, shard_map_args


def _block_mask(masks, axis, n, step, s):
  """The key mask of the block this device holds at `step` (it came from index - step)."""
  src = (lax.axis_index(axis) - step) % n
  return lax.dynamic_slice_in_dim(masks, src * s, s, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ring(axis, n, q, kv, ctx, masks):
  return _ring_forward(axis, n, q, kv, ctx, masks)[0]


def _ring_forward(axis, n, q, kv, ctx, masks):
  """q (B, Sq, H, D); kv = (k, v) local blocks or None; ctx = (kc, vc) or None; masks =
  (all main key masks (B, n * s), context mask)."""
  perm = [(i, (i + 1) % n) for i in range(n)]
  acc = None
  if ctx is not None:
    acc = blockwise.stats(q, ctx[0], ctx[1], masks[1])
  if kv is not None:
    s = kv[0].shape[1]
    blk = jnp.stack(kv)
    for step in range(n):
      nxt = lax.ppermute(blk, axis, perm) if step < n - 1 else None
      part = blockwise.stats(q, blk[0], blk[1], _block_mask(masks[0], axis, n, step, s))
      acc = part if acc is None else blockwise.combine(acc, part)
      blk = nxt
  out, lse = acc
  return out.astype(q.dtype), (q, kv, ctx, masks, out, lse)


def _ring_backward(axis, n, res, do):
  q, kv, ctx, masks, out, lse = res
  perm = [(i, (i + 1) % n) for i in range(n)]
  delta = blockwise.delta(do, out)
  dq = jnp.zeros(q.shape, jnp.float32)
  dctx = dkv = None
  if ctx is not None:
    dq, dkc, dvc = blockwise.grads(q, ctx[0], ctx[1], masks[1], lse, do, delta)
    dctx = (dkc.astype(ctx[0].dtype), dvc.astype(ctx[1].dtype))
  if kv is not None:
    s = kv[0].shape[1]
    # (k, v, dk, dv) travel together: one permute per step; after the last step only the
    # gradients travel, which brings them home.
    blk = jnp.stack([kv[0].astype(jnp.float32), kv[1].astype(jnp.float32),
                     jnp.zeros(kv[0].shape, jnp.float32), jnp.zeros(kv[1].shape, jnp.float32)])
    for step in range(n):
      dq_i, dk_i, dv_i = blockwise.grads(q, blk[0], blk[1],
                                         _block_mask(masks[0], axis, n, step, s), lse, do, delta)
      dq = dq + dq_i
      grads = jnp.stack([blk[2] + dk_i, blk[3] + dv_i])
      if step < n - 1:
        blk = lax.ppermute(jnp.concatenate([blk[:2], grads]), axis, perm)
      else:
        grads = lax.ppermute(grads, axis, perm)
    dkv = (grads[0].astype(kv[0].dtype), grads[1].astype(kv[1].dtype))
  return dq.astype(q.dtype), dkv, dctx, None


_ring.defvjp(_ring_forward, _ring_backward)


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask, *, spec, mesh):
  axis = spec.sequence_axis
  n = mesh.shape[axis]
  q, k, v, kv_mask, sq = padded_main(q, k, v, kv_mask, n)
  args, in_specs, out_specs = shard_map_args(spec, q, k, v, kv_mask, q_ctx, k_ctx, v_ctx,
                                             ctx_mask)

  def local(a):
    qq = join(a["q"], a.get("qc"))
    kv = (a["k"], a["v"]) if "k" in a else None
    ctx = (a["kc"], a["vc"]) if "kc" in a else None
    # The main key masks are tiny (B, S) booleans: gathered once, sliced per ring step.
    main_masks = lax.all_gather(a["m"], axis, axis=1, tiled=True) if "k" in a else None
    out = _ring(axis, n, qq, kv, ctx, (main_masks, a.get("cm")))
    s_main = a["q"].shape[1]
    ctx_out = lax.pmean(out[:, s_main:], axis) if "qc" in a else None
    return out[:, :s_main], ctx_out

  main, ctx = jax.shard_map(local, mesh=mesh, in_specs=(in_specs,), out_specs=out_specs,
                            check_vma=False)(args)
  return main[:, :sq], ctx
