"""cuDNN fused attention on NVIDIA GPUs (`jax.nn.dot_product_attention`, cudnn backend).

cuDNN takes bf16/fp16 inputs; the key mask becomes an additive bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention.common import join, split


def attend_joined(q, k, v, mask):
  """q (B, Sq, H, D), k/v (B, Sk, H, D), mask (B, Sk)."""
  dtype = q.dtype
  if dtype not in (jnp.bfloat16, jnp.float16):
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  neg = jnp.asarray(jnp.finfo(q.dtype).min, q.dtype)
  bias = jnp.where(mask[:, None, None, :], jnp.zeros((), q.dtype), neg)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn").astype(dtype)


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask):
  out = attend_joined(join(q, q_ctx), join(k, k_ctx), join(v, v_ctx), join(kv_mask, ctx_mask))
  return split(out, None if q is None else q.shape[1], q_ctx is not None)
