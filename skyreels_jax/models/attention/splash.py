"""Splash attention: the TPU Pallas flash-attention kernel (jax.experimental.pallas).

Never materialises the S x S scores, so long sequences fit on TPU where `dot_product` does
not. Key padding is expressed as segment ids (valid keys = segment 1, every query = segment
1). Lengths are padded to the kernel's block sizes (`blocks`), so any length works. Batch and
heads are split with shard_map over the mesh (the Pallas call itself is per device). On
CPU/GPU the kernel runs in Pallas interpret mode (slow; it exists so the strategy is testable
everywhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from skyreels_jax.models.attention.common import join, platform, split
from skyreels_jax.models.attention._sharded import pad_to, specs

BLOCK, MAX_BLOCK = 128, 512
# The kernel keeps its block tables (block_mask: int8, data_next: the smallest int that holds
# a block index) in SMEM, per (query block, key block) pair: 1 MiB on v5p. At 480p Ulysses'
# 307k tokens in 512-blocks they need 1.08 MB and the compile fails ("Ran out of memory in
# memory space smem"). Longer sequences take larger blocks, keeping the tables under this.
SMEM_TABLE_BYTES = 768 * 1024
# Larger (query, key) blocks, tried in order, the key block computed in MAX_BLOCK tiles. Compiled
# for v5p (benchmarks/splash_blocks.py): these fit VMEM; 2048 x 2048 and 4096 x 1024 do not.
LONG_BLOCKS = ((1024, 1024), (2048, 1024))


def block(length: int) -> int:
  """MAX_BLOCK, or the whole length rounded up to BLOCK when shorter (the kernel asks its
  blocks to divide the length: 157440 tokens pad to 157696, not to 157440's 128-multiple)."""
  return min(MAX_BLOCK, -(-length // BLOCK) * BLOCK)


def table_bytes(sq: int, sk: int, bq: int, bkv: int) -> int:
  """SMEM bytes of one kernel's block tables for sq queries and sk keys in (bq, bkv) blocks."""
  nq, nk = -(-sq // bq), -(-sk // bkv)
  index = 1 if max(nq, nk) <= 127 else 2 if max(nq, nk) <= 32767 else 4
  return nq * nk * (1 + index)


def blocks(sq: int, sk: int) -> tuple[int, int]:
  """(query block, key block): `block` of each length, or at lengths whose tables would not
  fit SMEM_TABLE_BYTES the first of LONG_BLOCKS that fits (else the last)."""
  for bq, bkv in ((block(sq), block(sk)), *LONG_BLOCKS):
    if table_bytes(sq, sk, bq, bkv) <= SMEM_TABLE_BYTES:
      break
  return bq, bkv


def _kernel(heads: int, sq: int, sk_len: int, bq: int, bkv: int, interpret: bool):
  compute = min(bkv, MAX_BLOCK)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=compute, block_q_dkv=bq,
                        block_kv_dkv=bkv, block_kv_dkv_compute=compute, block_q_dq=bq,
                        block_kv_dq=bkv)
  mask = sm.MultiHeadMask([sm.FullMask((sq, sk_len)) for _ in range(heads)])
  return sk.make_splash_mha(mask=mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def attend_joined(q, k, v, kv_mask):
  """Unsharded: q (B, Sq, H, D), k/v (B, Sk, H, D), kv_mask (B, Sk)."""
  b, s_q, h, d = q.shape
  bq, bkv = blocks(s_q, k.shape[1])
  q, k, v = pad_to(q, bq), pad_to(k, bkv), pad_to(v, bkv)
  kv_mask = pad_to(kv_mask, bkv, False)
  kernel = _kernel(h, q.shape[1], k.shape[1], bq, bkv, platform() != "tpu")
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
