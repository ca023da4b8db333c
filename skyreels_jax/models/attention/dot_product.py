"""Plain XLA attention (materialises the Sq x Sk scores; the reference for every strategy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, kv_mask: jax.Array | None = None
           ) -> jax.Array:
  mask = None if kv_mask is None else kv_mask[:, None, None, :].astype(jnp.bool_)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
