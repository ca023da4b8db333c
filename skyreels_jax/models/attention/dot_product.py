"""Plain XLA attention (materialises the Sq x Sk scores; the reference for every strategy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention.common import on_joined


def attend_joined(q, k, v, mask):
  """q (B, Sq, H, D), k/v (B, Sk, H, D), mask (B, Sk)."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :].astype(jnp.bool_),
                                      implementation="xla")


local_attend = on_joined(attend_joined)
