"""Qwen2.5-VL as a frozen text(+image) encoder, in NNX.

The language model of transformers' `Qwen2_5_VLForConditionalGeneration` (RMSNorm, GQA
attention with q/k/v biases, multimodal rotary embedding split by `mrope_section`, SwiGLU
MLP), fed by the vision tower of qwen2_5_vl_vision.py whose merged tokens replace the image
placeholder tokens. No lm_head: the encoder returns hidden states.

Which hidden state: `config.output_layer = k` indexes the tuple transformers returns with
`output_hidden_states=True` (length num_layers + 1): k = 0 is the token embeddings (with the
image features scattered in), 0 < k < num_layers the residual stream after k decoder layers
(before any norm), and k = num_layers (= -1) the output of the last layer AFTER the final
RMSNorm (transformers overwrites hidden_states[-1] with last_hidden_state). Negative k
counts from the end as in Python. Only the first k layers run.

Positions (what transformers does for the same inputs): with images, `mrope_positions` ports
`get_rope_index` over the attended tokens (text advances all three axes by one; an image
takes (t, h, w) offsets from its start and advances by max(h, w) / merge). Text-only,
transformers uses arange(L) while we use the attended-token count: the same relative
positions for every attended token, so the same outputs (RoPE is shift invariant) up to
float rounding. The attention is causal and masks padded keys; hidden states at padded
positions are set to zero (transformers leaves arbitrary values there).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.models.layers import RMSNorm, dense
from skyreels_jax.models.text.qwen2_5_vl_vision import (GatedMLP, Qwen25VisionConfig,
                                                        VisionTower, masked_attention,
                                                        rotate_half, stacked_layers)


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  """Qwen2.5-VL-7B by default. `vision=None` builds a text-only encoder (no vision tower)."""
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  vision: Qwen25VisionConfig | None = Qwen25VisionConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  output_layer: int = -1

  def __post_init__(self):
    head_dim = self.hidden_size // self.num_heads
    if head_dim * self.num_heads != self.hidden_size:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if sum(self.mrope_section) != head_dim // 2:
      raise ValueError(f"mrope_section={self.mrope_section} must sum to head_dim / 2 = "
                       f"{head_dim // 2}")
    if not -(self.num_layers + 1) <= self.output_layer <= self.num_layers:
      raise ValueError(f"output_layer={self.output_layer}: the hidden-state tuple has "
                       f"{self.num_layers + 1} entries")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def layers_run(self) -> int:
    """How many decoder layers produce hidden state `output_layer`."""
    return self.output_layer % (self.num_layers + 1)


def mrope_positions(input_ids: jax.Array, mask: jax.Array, grid_thw: np.ndarray | None,
                    cfg: Qwen25VLConfig) -> jax.Array:
  """(3, B, L) int32 (t, h, w) positions, transformers' `get_rope_index` in jnp (traceable in
  the ids; `grid_thw` is host data). Images are matched to image-token runs in order over the
  batch, as transformers' grid iterator does; padded positions get unspecified values."""
  valid = mask.astype(bool)
  if grid_thw is None or len(grid_thw) == 0:
    pos = jnp.cumsum(valid, axis=1) - 1
    return jnp.broadcast_to(pos, (3,) + pos.shape).astype(jnp.int32)
  m = cfg.vision.spatial_merge_size
  g = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  lt, lh, lw = g[:, 0], g[:, 1] // m, g[:, 2] // m
  count = lt * lh * lw
  ends, starts = np.cumsum(count), np.cumsum(count) - count
  is_img = (input_ids == cfg.image_token_id) & valid
  rank = (jnp.cumsum(is_img.reshape(-1)) - 1).reshape(is_img.shape)
  img = jnp.clip(jnp.searchsorted(jnp.asarray(ends), rank, side="right"), 0, len(g) - 1)
  take = lambda a: jnp.asarray(a, jnp.int32)[img]
  off = rank - take(starts)
  hw = take(lh * lw)
  t_idx, h_idx, w_idx = off // hw, (off % hw) // take(lw), off % take(lw)
  last_of_image = off == take(count) - 1
  advance = jnp.where(is_img, jnp.where(last_of_image, take(np.maximum(lh, lw)), 0),
                      valid.astype(jnp.int32))
  before = jnp.cumsum(advance, axis=1) - advance
  pos = jnp.stack([before + jnp.where(is_img, i, 0) for i in (t_idx, h_idx, w_idx)])
  return pos.astype(jnp.int32)


def mrope_cos_sin(positions: jax.Array, cfg: Qwen25VLConfig) -> tuple[jax.Array, jax.Array]:
  """(3, B, L) positions -> cos, sin (B, L, head_dim): frequency band i of `mrope_section`
  takes its angle from axis i % 3, and the half is repeated (rotate_half layout)."""
  hd = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
  axis = np.repeat(np.arange(len(cfg.mrope_section)) % 3, cfg.mrope_section)   # (hd/2,)
  freqs = jnp.moveaxis(positions[axis], 0, -1).astype(jnp.float32) * inv_freq  # (B, L, hd/2)
  freqs = jnp.concatenate([freqs, freqs], -1)
  return jnp.cos(freqs), jnp.sin(freqs)


class TextAttention(nnx.Module):

  def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    d, hd = cfg.hidden_size, cfg.head_dim
    self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
    self.q_proj = dense(d, cfg.num_heads * hd, ("embed", "heads"), **kw)
    self.k_proj = dense(d, cfg.num_kv_heads * hd, ("embed", "heads"), **kw)
    self.v_proj = dense(d, cfg.num_kv_heads * hd, ("embed", "heads"), **kw)
    self.o_proj = dense(cfg.num_heads * hd, d, ("heads", "embed"), use_bias=False, **kw)

  def __call__(self, x, cos, sin, allowed):
    b, s, _ = x.shape
    q = self.q_proj(x).reshape(b, s, self.heads, self.head_dim)
    k = self.k_proj(x).reshape(b, s, self.kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, s, self.kv_heads, self.head_dim)
    rot = lambda t: (t * cos[:, :, None] + rotate_half(t) * sin[:, :, None]).astype(t.dtype)
    out = masked_attention(rot(q), rot(k), v, allowed)
    return self.o_proj(out.reshape(b, s, -1))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: Qwen25VLConfig, rngs: nnx.Rngs, *, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                                   param_dtype=param_dtype)
    self.self_attn = TextAttention(cfg, **kw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps,
                                            param_dtype=param_dtype)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, use_bias=False, **kw)

  def __call__(self, x, ctx):
    x = x + self.self_attn(self.input_layernorm(x), ctx["cos"], ctx["sin"], ctx["allowed"])
    return x + self.mlp(self.post_attention_layernorm(x))


class Qwen25VLEncoder(nnx.Module):
  """(input_ids, attention_mask[, pixel_values, image_grid_thw]) -> (hidden states of
  `config.output_layer` (B, L, hidden_size), attention_mask)."""

  def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.config = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02),
                                             ("vocab", "embed")))
    self.layers = stacked_layers(cfg.num_layers, lambda r: DecoderLayer(cfg, r, **kw), rngs)
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.visual = (VisionTower(cfg.vision, rngs=rngs, **kw) if cfg.vision is not None
                   else None)

  def embed(self, input_ids, pixel_values, image_grid_thw):
    """Token embeddings with the image features written over the image placeholders in
    row-major order (transformers' masked_scatter)."""
    x = self.embed_tokens(input_ids)
    if pixel_values is None:
      return x
    if self.visual is None:
      raise ValueError("pixel_values given to a text-only encoder (config.vision is None)")
    feats = self.visual(jnp.asarray(pixel_values), np.asarray(image_grid_thw))
    is_img = input_ids == self.config.image_token_id
    if not isinstance(is_img, jax.core.Tracer):
      n = int(is_img.sum())
      if n != feats.shape[0]:
        raise ValueError(f"Image features and image tokens do not match, tokens: {n}, "
                         f"features: {feats.shape[0]}")
    rank = jnp.clip(jnp.cumsum(is_img.reshape(-1)) - 1, 0).reshape(is_img.shape)
    return jnp.where(is_img[..., None], feats[rank].astype(x.dtype), x)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               pixel_values: jax.Array | None = None,
               image_grid_thw: np.ndarray | None = None):
    cfg = self.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.asarray(attention_mask).astype(bool)
    if (pixel_values is None) != (image_grid_thw is None):
      raise ValueError("pixel_values and image_grid_thw come together")
    x = self.embed(input_ids, pixel_values, image_grid_thw)
    n = cfg.layers_run
    if n > 0:
      grid = None if pixel_values is None else np.asarray(image_grid_thw)
      cos, sin = mrope_cos_sin(mrope_positions(input_ids, mask, grid, cfg), cfg)
      s = input_ids.shape[1]
      causal = np.tril(np.ones((s, s), bool))
      ctx = {"cos": cos, "sin": sin, "allowed": causal[None] & mask[:, None, :]}
      graphdef, state = nnx.split(self.layers)
      state = jax.tree.map(lambda a: a[:n], state)

      def body(h, layer_state):
        return nnx.merge(graphdef, layer_state)(h, ctx), None

      x, _ = jax.lax.scan(body, x, state)
      if n == cfg.num_layers:
        x = self.norm(x)
    return jnp.where(mask[..., None], x, 0).astype(x.dtype), mask
