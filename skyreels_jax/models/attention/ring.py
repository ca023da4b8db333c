"""Ring attention: each device keeps its S/n queries; key/value blocks travel around the
`sequence` axis (ppermute) and are folded in with an online softmax (float32 accumulators).
The replicated context keys are folded in once, locally; context queries are answered on
every device and averaged (pmean) so all replicas hold the same bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from skyreels_jax.models.attention.common import join
from skyreels_jax.models.attention._sharded import padded_main, shard_map_args

_NEG = -1e30


def _fold(carry, q, k, v, mask, scale):
  """One block of the online softmax: carry = (out, row_sum, row_max) in float32."""
  out, row_sum, row_max = carry
  s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
  s = jnp.where(mask[:, None, None, :], s, _NEG)
  new_max = jnp.maximum(row_max, s.max(-1))
  p = jnp.exp(s - new_max[..., None]) * mask[:, None, None, :]
  correction = jnp.exp(row_max - new_max)
  row_sum = row_sum * correction + p.sum(-1)
  out = out * correction.transpose(0, 2, 1)[..., None] + jnp.einsum(
      "bhqk,bkhd->bqhd", p, v.astype(jnp.float32))
  return out, row_sum, new_max


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask, *, spec, mesh):
  axis = spec.sequence_axis
  n = mesh.shape[axis]
  q, k, v, kv_mask, sq = padded_main(q, k, v, kv_mask, n)
  args, in_specs, out_specs = shard_map_args(spec, q, k, v, kv_mask, q_ctx, k_ctx, v_ctx,
                                             ctx_mask)
  scale = q.shape[-1] ** -0.5

  def local(a):
    qq = join(a["q"], a.get("qc"))
    b, s, h, d = qq.shape
    carry = (jnp.zeros((b, s, h, d), jnp.float32), jnp.zeros((b, h, s), jnp.float32),
             jnp.full((b, h, s), _NEG, jnp.float32))
    if "kc" in a:
      carry = _fold(carry, qq, a["kc"], a["vc"], a["cm"], scale)
    if "k" in a:
      perm = [(i, (i + 1) % n) for i in range(n)]

      def step(_, state):
        carry, blk = state
        carry = _fold(carry, qq, *blk, scale)
        blk = tuple(lax.ppermute(x, axis, perm) for x in blk)
        return carry, blk

      carry, _ = lax.fori_loop(0, n, step, (carry, (a["k"], a["v"], a["m"])))
    out, row_sum, _ = carry
    out = (out / jnp.maximum(row_sum, 1e-30).transpose(0, 2, 1)[..., None]).astype(qq.dtype)
    s_main = a["q"].shape[1]
    ctx = lax.pmean(out[:, s_main:], axis) if "qc" in a else None
    return out[:, :s_main], ctx

  main, ctx = jax.shard_map(local, mesh=mesh, in_specs=(in_specs,), out_specs=out_specs,
                            check_vma=False)(args)
  return main[:, :sq], ctx
