"""cuDNN fused attention on NVIDIA GPUs (`jax.nn.dot_product_attention`, cudnn backend).

cuDNN takes bf16/fp16 inputs; the key mask becomes an additive bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention.common import join, split


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask):
  qq, kk, vv, mask = join(q, q_ctx), join(k, k_ctx), join(v, v_ctx), join(kv_mask, ctx_mask)
  dtype = qq.dtype
  if dtype not in (jnp.bfloat16, jnp.float16):
    qq, kk, vv = (x.astype(jnp.bfloat16) for x in (qq, kk, vv))
  neg = jnp.asarray(jnp.finfo(qq.dtype).min, qq.dtype)
  bias = jnp.where(mask[:, None, None, :], jnp.zeros((), qq.dtype), neg)
  out = jax.nn.dot_product_attention(qq, kk, vv, bias=bias, implementation="cudnn")
  return split(out.astype(dtype), None if q is None else q.shape[1], q_ctx is not None)
