"""Splash attention: the TPU Pallas flash-attention kernel (jax.experimental.pallas).

Never materialises the S x S scores, so long sequences fit on TPU where `dot_product` does
not. Key padding is expressed as segment ids (valid keys = segment 1, every query = segment
1). Lengths are padded to the kernel's block size (`block`: 512, or the whole length rounded up
to 128 when shorter), so any length works. Batch and heads are split with shard_map
over the mesh (the Pallas call itself is per device). On CPU/GPU the kernel runs in Pallas
interpret mode (slow; it exists so the strategy is testable everywhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from skyreels_jax.models.attention.common import join, platform, split
from skyreels_jax.models.attention._sharded import pad_to, specs

BLOCK, MAX_BLOCK = 128, 512


def block(length: int) -> int:
  """The kernel's block along a sequence of `length`: MAX_BLOCK, or the whole length rounded
  up to BLOCK when shorter. The sequence is padded to a multiple of it (the kernel asks its
  blocks to divide the length: 157440 tokens pad to 157696, not to 157440's 128-multiple)."""
  return min(MAX_BLOCK, -(-length // BLOCK) * BLOCK)


def _kernel(heads: int, sq: int, sk_len: int, interpret: bool):
  bq, bkv = block(sq), block(sk_len)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                        block_kv_dq=bkv)
  mask = sm.MultiHeadMask([sm.FullMask((sq, sk_len)) for _ in range(heads)])
  return sk.make_splash_mha(mask=mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def attend_joined(q, k, v, kv_mask):
  """Unsharded: q (B, Sq, H, D), k/v (B, Sk, H, D), kv_mask (B, Sk)."""
  b, s_q, h, d = q.shape
  bq, bkv = block(s_q), block(k.shape[1])
  q, k, v = pad_to(q, bq), pad_to(k, bkv), pad_to(v, bkv)
  kv_mask = pad_to(kv_mask, bkv, False)
  kernel = _kernel(h, q.shape[1], k.shape[1], platform() != "tpu")
  seg = sk.SegmentIds(q=jnp.ones(q.shape[:2], jnp.int32), kv=kv_mask.astype(jnp.int32))
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  out = jax.vmap(kernel)(heads_first(q * d ** -0.5), heads_first(k), heads_first(v),
                         segment_ids=seg)
  return heads_first(out)[:, :s_q]


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask, *, spec=None):
  qq, kk, vv, mask = join(q, q_ctx), join(k, k_ctx), join(v, v_ctx), join(kv_mask, ctx_mask)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or spec is None or not (spec.batch_axes or spec.head_axis):
    out = attend_joined(qq, kk, vv, mask)
  else:
    _, rep, _, rep_mask = specs(spec)
    out = jax.shard_map(attend_joined, mesh=mesh, in_specs=(rep, rep, rep, rep_mask), out_specs=rep,
                        check_vma=False)(qq, kk, vv, mask)
  return split(out, None if q is None else q.shape[1], q_ctx is not None)
