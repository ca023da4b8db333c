"""One attention entry point; each strategy is a small module registered here.

Every strategy takes q (B, Sq, H, D), k/v (B, Sk, H, D) and an optional key mask (B, Sk)
(True = attend) and returns (B, Sq, H, D). Strategies that need a mesh (Ulysses, ring)
receive it from the config through `attention(..., mesh=...)`.
"""

from __future__ import annotations

from typing import Callable

import jax

from skyreels_jax.models.attention import cudnn, dot_product

STRATEGIES: dict[str, Callable[..., jax.Array]] = {
    "dot_product": dot_product.attend,
    "cudnn": cudnn.attend,
}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, kv_mask: jax.Array | None = None,
              impl: str = "dot_product") -> jax.Array:
  try:
    fn = STRATEGIES[impl]
  except KeyError:
    raise ValueError(f"attention={impl!r}: choose one of {sorted(STRATEGIES)}") from None
  return fn(q, k, v, kv_mask=kv_mask)
