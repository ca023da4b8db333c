"""cuDNN fused attention on NVIDIA GPUs (`jax.nn.dot_product_attention`, cudnn backend).

cuDNN takes bf16/fp16 inputs; the key mask becomes an additive bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention.common import on_joined


def attend_joined(q, k, v, mask):
  """q (B, Sq, H, D), k/v (B, Sk, H, D), mask (B, Sk)."""
  dtype = q.dtype
  if dtype not in (jnp.bfloat16, jnp.float16):
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  neg = jnp.asarray(jnp.finfo(q.dtype).min, q.dtype)
  bias = jnp.where(mask[:, None, None, :], jnp.zeros((), q.dtype), neg)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn").astype(dtype)


attend = on_joined(attend_joined)
