"""Plain XLA attention (materialises the Sq x Sk scores; the reference for every strategy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention.common import join, split


def attend_joined(q, k, v, mask):
  """q (B, Sq, H, D), k/v (B, Sk, H, D), mask (B, Sk)."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :].astype(jnp.bool_),
                                      implementation="xla")


def local_attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask):
  out = attend_joined(join(q, q_ctx), join(k, k_ctx), join(v, v_ctx), join(kv_mask, ctx_mask))
  return split(out, None if q is None else q.shape[1], q_ctx is not None)
