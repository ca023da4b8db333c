"""cuDNN fused attention on NVIDIA GPUs (`jax.nn.dot_product_attention`, cudnn backend).

cuDNN takes bf16/fp16 inputs; the key mask becomes an additive bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, kv_mask: jax.Array | None = None
           ) -> jax.Array:
  dtype = q.dtype
  if dtype not in (jnp.bfloat16, jnp.float16):
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  bias = None
  if kv_mask is not None:
    neg = jnp.asarray(jnp.finfo(q.dtype).min, q.dtype)
    bias = jnp.where(kv_mask[:, None, None, :], jnp.zeros((), q.dtype), neg)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")
  return out.astype(dtype)
