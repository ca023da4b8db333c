"""Building blocks shared by every branch: dense layers with logical axes, norms, MLP,
AdaLN modulation, timestep / pooled-text embeddings, patch embedding.

Layouts follow diffusers' HunyuanVideo modules (weight-compatible), so a pretrained video
model's tensors map one to one (see tests/models/test_hunyuan_parity.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_ZEROS = nnx.initializers.zeros_init()


class Dense(nnx.Linear):
  """nnx.Linear that pins the model width of the activations it reads or writes (logical
  axis "embed") to be unsharded, the Megatron layout: a column-parallel layer (embed -> heads
  / mlp) pins its input, a row-parallel one (heads / mlp -> embed) its output; the batch and
  sequence dimensions are left to the propagator. The backward pass inherits the pins.

  Why: left free, the sharding propagator can put the width of such an activation on
  `tensor`, and XLA's SPMD partitioner (jax 0.10.2) then computes `x (B on data x fsdp, K on
  tensor) @ w (K on tensor, N on fsdp) -> (B, N on tensor)` wrongly on meshes with data,
  fsdp and tensor all > 1 (README "Known issues"; tests/parallel/test_sharding.py)."""

  def __init__(self, *args, axes: tuple[str | None, str | None], **kwargs):
    super().__init__(*args, **kwargs)
    self.pin_input, self.pin_output = axes[0] == "embed", axes[1] == "embed"

  def __call__(self, x: jax.Array) -> jax.Array:
    y = super().__call__(pin_width(x) if self.pin_input else x)
    return pin_width(y) if self.pin_output else y


def pin_width(x: jax.Array) -> jax.Array:
  """Constrains the last dimension to be unsharded, the others free. No-op without a mesh."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  free = jax.sharding.PartitionSpec.UNCONSTRAINED
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.PartitionSpec(*([free] * (x.ndim - 1)), None))


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
          rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, use_bias: bool = True,
          zero_init: bool = False) -> Dense:
  """A Linear whose kernel carries logical axes `axes` (in, out) and bias `axes[1]`."""
  kernel_init = _ZEROS if zero_init else nnx.initializers.xavier_uniform()
  return Dense(
      in_features, out_features, axes=axes, use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype, kernel_init=nnx.with_partitioning(kernel_init, axes),
      bias_init=nnx.with_partitioning(_ZEROS, (axes[1],)), rngs=rngs)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine parameters, computed in float32."""
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm with a learned scale (QK-norm over the head dim), computed in float32."""

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
    return (xf * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class MLP(nnx.Module):
  """Linear -> GELU(tanh) -> Linear (diffusers FeedForward, "gelu-approximate")."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype,
                     param_dtype=param_dtype)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype,
                     param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class AdaLNModulation(nnx.Module):
  """SiLU -> Linear -> `n` chunks of (B, 1, D). Zero-initialised: AdaLN-Zero."""

  def __init__(self, dim: int, n: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    self.n = n
    self.linear = dense(dim, n * dim, ("embed", "adaln"), rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype, zero_init=True)

  def __call__(self, emb: jax.Array) -> list[jax.Array]:
    out = self.linear(jax.nn.silu(emb))[:, None, :]
    return jnp.split(out, self.n, axis=-1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding, [cos, sin] order (diffusers Timesteps, flip_sin_to_cos=True)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TwoLayerEmbedding(nnx.Module):
  """Linear -> SiLU -> Linear: diffusers TimestepEmbedding / PixArtAlphaTextProjection."""

  def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    self.linear_1 = dense(in_dim, dim, ("patch", "embed"), rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)
    self.linear_2 = dense(dim, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class ConditionEmbedding(nnx.Module):
  """Timestep (+ optional guidance) embedding plus the pooled text projection: the vector
  that drives AdaLN in every block of a branch."""

  def __init__(self, dim: int, text_dim: int, *, guidance: bool, rngs: nnx.Rngs, dtype,
               param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.timestep_embedder = TwoLayerEmbedding(256, dim, **kw)
    self.text_embedder = TwoLayerEmbedding(text_dim, dim, **kw)
    self.guidance_embedder = TwoLayerEmbedding(256, dim, **kw) if guidance else None

  def __call__(self, timestep: jax.Array, pooled_text: jax.Array,
               guidance: jax.Array | None = None) -> jax.Array:
    emb = self.timestep_embedder(timestep_sinusoid(timestep)) + self.text_embedder(pooled_text)
    if self.guidance_embedder is not None:
      if guidance is None:
        raise ValueError("model.guidance_embed is on: pass a guidance scale")
      emb = emb + self.guidance_embedder(timestep_sinusoid(guidance))
    return emb


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over axis 1 of (B, L, D) where mask (B, L) is true; zeros if nothing is valid."""
  m = mask.astype(jnp.float32)[..., None]
  return ((x.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)).astype(x.dtype)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """(B, *grid, C) -> (B, N, C * prod(patch)), patches in row-major grid order and the
  in-patch layout (C, p_0, p_1, ...) of a PyTorch Conv with kernel = stride = patch."""
  b, *grid, c = x.shape
  nd = len(grid)
  shape = [b]
  for g, p in zip(grid, patch):
    shape += [g // p, p]
  x = x.reshape(*shape, c)
  outer = [1 + 2 * i for i in range(nd)]
  inner = [2 + 2 * i for i in range(nd)]
  x = x.transpose(0, *outer, 1 + 2 * nd, *inner)
  n = math.prod(g // p for g, p in zip(grid, patch))
  return x.reshape(b, n, -1)


def unpatchify(x: jax.Array, grid: Sequence[int], patch: Sequence[int], c: int) -> jax.Array:
  """(B, N, C * prod(patch)) -> (B, *grid, C), the inverse of `patchify` (the same in-patch
  layout (C, p_0, p_1, ...) as HunyuanVideo's proj_out)."""
  b = x.shape[0]
  nd = len(grid)
  coarse = [g // p for g, p in zip(grid, patch)]
  x = x.reshape(b, *coarse, c, *patch)
  perm = [0]
  for i in range(nd):
    perm += [1 + i, 2 + nd + i]
  x = x.transpose(*perm, 1 + nd)
  return x.reshape(b, *grid, c)
