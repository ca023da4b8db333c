"""HunyuanVideo's token refiner (model.text_refiner_layers > 0): the text context of a branch,
projected to the model width, goes through a few self-attention blocks gated by a timestep +
pooled-text embedding of its own, before the joint blocks see it. diffusers:
HunyuanVideoTokenRefiner (`context_embedder.*`); parity in tests/models/test_hunyuan_parity.py.

Each block: x + gate_msa * Attn(LN(x)), then x + gate_mlp * FF(LN(x)) with the gates from
SiLU -> Linear of the embedding (not zero-initialised: the published refiner is trained).
Attention: token i sees token j when both are real prompt tokens; padded tokens see the
first token only (diffusers' mask, so no row is empty).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.models.layers import ConditionEmbedding, dense, masked_mean


class RefinerBlock(nnx.Module):

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs, dtype,
               param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.num_heads = num_heads
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, **kw)
    self.to_q = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_k = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_v = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_out = dense(dim, dim, ("heads", "embed"), **kw)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, **kw)
    hidden = int(dim * mlp_ratio)
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), **kw)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), **kw)
    self.norm_out = dense(dim, 2 * dim, ("embed", "adaln"), **kw)

  def _attend(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
    b, n, d = x.shape
    heads = lambda y: y.reshape(b, n, self.num_heads, d // self.num_heads)
    q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(
        jnp.float32(d // self.num_heads))
    scores = jnp.where(allowed[:, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return self.to_out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d))

  def __call__(self, x: jax.Array, temb: jax.Array, allowed: jax.Array) -> jax.Array:
    gate_msa, gate_mlp = jnp.split(self.norm_out(jax.nn.silu(temb))[:, None, :], 2, axis=-1)
    x = x + self._attend(self.norm1(x), allowed) * gate_msa
    return x + self.fc2(jax.nn.silu(self.fc1(self.norm2(x)))) * gate_mlp


class TokenRefiner(nnx.Module):
  """(B, L, width) projected text -> refined text, given the raw text (B, L, text_dim) for
  its pooled embedding, the mask (B, L) and the branch's timestep (model units)."""

  def __init__(self, dim: int, text_dim: int, num_heads: int, num_layers: int,
               mlp_ratio: float = 4.0, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.time_text_embed = ConditionEmbedding(dim, text_dim, guidance=False, **kw)
    self.blocks = nnx.List([RefinerBlock(dim, num_heads, mlp_ratio, **kw)
                            for _ in range(num_layers)])

  def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array,
               timestep: jax.Array) -> jax.Array:
    temb = self.time_text_embed(timestep, masked_mean(text, text_mask))
    m = jnp.asarray(text_mask, bool)
    allowed = (m[:, :, None] & m[:, None, :]).at[:, :, 0].set(True)
    for block in self.blocks:
      x = block(x, temb, allowed)
    return x
