"""Qwen2.5-VL as a frozen text(+image, +video) encoder, in NNX.

The language model of transformers' `Qwen2_5_VLForConditionalGeneration` (RMSNorm, GQA
attention with q/k/v biases, multimodal rotary embedding split by `mrope_section`, SwiGLU
MLP), fed by the vision tower of qwen2_5_vl_vision.py whose merged tokens replace the image
(video) placeholder tokens. No lm_head: the encoder returns hidden states.

Which hidden state: `config.output_layer = k` indexes the tuple transformers returns with
`output_hidden_states=True` (length num_layers + 1): k = 0 is the token embeddings (with the
image and video features scattered in), 0 < k < num_layers the residual stream after k
decoder layers (before any norm), and k = num_layers (= -1) the output of the last layer
AFTER the final RMSNorm (transformers overwrites hidden_states[-1] with last_hidden_state).
Negative k counts from the end as in Python. Only the first k layers run.

Positions (what transformers does for the same inputs): with images or videos,
`mrope_positions` ports `get_rope_index` over the attended tokens (text advances all three
axes by one; an image or video takes (t, h, w) offsets from its start, a video's t scaled by
tokens_per_second * second_per_grid_ts and floored, and advances by max(h, w) / merge
whatever its length, so later text can sit below its last temporal positions). Text-only,
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
  # HF vision_config.tokens_per_second: temporal rope positions per second of video.
  tokens_per_second: int = 2
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


def _modality_offsets(input_ids, valid, token_id, grid_thw, time_interval, m):
  """One modality's placeholder runs, matched in order over the batch to the rows of
  `grid_thw`: whether each token is one, its (t, h, w) offsets from the run's start, and how
  far the run's last token advances the text position (max(h, w) / merge; 0 elsewhere).

  The temporal offsets are host tables: transformers' `(arange(t) * time_interval).long()`
  in float32 (its dtype when second_per_grid_ts is a float tensor), so floor rounding
  matches."""
  g = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  lt, lh, lw = g[:, 0], g[:, 1] // m, g[:, 2] // m
  count = lt * lh * lw
  ends = np.cumsum(count)
  t_table = np.concatenate([(np.arange(t, dtype=np.float32) * np.float32(s)).astype(np.int64)
                            for t, s in zip(lt, time_interval)])
  t_first = np.cumsum(lt) - lt
  is_tok = (input_ids == token_id) & valid
  rank = (jnp.cumsum(is_tok.reshape(-1)) - 1).reshape(is_tok.shape)
  item = jnp.clip(jnp.searchsorted(jnp.asarray(ends), rank, side="right"), 0, len(g) - 1)
  take = lambda a: jnp.asarray(a, jnp.int32)[item]
  off = jnp.clip(rank - take(ends - count), 0)
  hw = take(lh * lw)
  t_row = jnp.clip(take(t_first) + off // hw, 0, len(t_table) - 1)
  offsets = (jnp.asarray(t_table, jnp.int32)[t_row], (off % hw) // take(lw), off % take(lw))
  advance = jnp.where(off == take(count) - 1, take(np.maximum(lh, lw)), 0)
  return is_tok, offsets, advance


def mrope_positions(input_ids: jax.Array, mask: jax.Array, grid_thw: np.ndarray | None,
                    cfg: Qwen25VLConfig, video_grid_thw: np.ndarray | None = None,
                    second_per_grid_ts: np.ndarray | None = None) -> jax.Array:
  """(3, B, L) int32 (t, h, w) positions, transformers' `get_rope_index` in jnp (traceable in
  the ids; the grids are host data). `grid_thw` are the images, matched to image-token runs
  in order over the batch as transformers' grid iterator does; videos likewise, with
  temporal offsets scaled by tokens_per_second * second_per_grid_ts (1 s per grid if None).
  Padded positions get unspecified values."""
  valid = mask.astype(bool)
  modalities = []
  if grid_thw is not None and len(grid_thw):
    ones = np.ones(len(np.asarray(grid_thw).reshape(-1, 3)), np.float32)
    modalities.append((cfg.image_token_id, grid_thw, ones))
  if video_grid_thw is not None and len(video_grid_thw):
    n = len(np.asarray(video_grid_thw).reshape(-1, 3))
    secs = (np.ones(n, np.float32) if second_per_grid_ts is None else
            np.asarray(second_per_grid_ts, np.float32).reshape(-1))
    if secs.shape != (n,):
      raise ValueError(f"second_per_grid_ts has {secs.size} entries for {n} videos")
    # float32 product, as torch computes int * float32 tensor.
    modalities.append((cfg.video_token_id, video_grid_thw,
                       np.float32(cfg.tokens_per_second) * secs))
  if not modalities:
    pos = jnp.cumsum(valid, axis=1) - 1
    return jnp.broadcast_to(pos, (3,) + pos.shape).astype(jnp.int32)
  m = cfg.vision.spatial_merge_size
  advance = valid.astype(jnp.int32)
  offsets = [jnp.zeros_like(advance)] * 3
  for token_id, grid, interval in modalities:
    is_tok, off, adv = _modality_offsets(input_ids, valid, token_id, grid, interval, m)
    advance = jnp.where(is_tok, adv, advance)
    offsets = [jnp.where(is_tok, o, acc) for o, acc in zip(off, offsets)]
  before = jnp.cumsum(advance, axis=1) - advance
  return jnp.stack([before + o for o in offsets]).astype(jnp.int32)


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
  """(input_ids, attention_mask[, pixel_values, image_grid_thw][, pixel_values_videos,
  video_grid_thw[, second_per_grid_ts]]) -> (hidden states of `config.output_layer`
  (B, L, hidden_size), attention_mask). Grids and second_per_grid_ts are host arrays."""

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

  def _vision_features(self, pixels, grid_thw, input_ids, token_id, what):
    """The tower's merged tokens for `pixels`, checked against the placeholder count."""
    if self.visual is None:
      raise ValueError(f"{what} pixels given to a text-only encoder (config.vision is None)")
    feats = self.visual(jnp.asarray(pixels), np.asarray(grid_thw))
    if not isinstance(input_ids, jax.core.Tracer):
      n = int((input_ids == token_id).sum())
      if n != feats.shape[0]:
        raise ValueError(f"{what.capitalize()} features and {what} tokens do not match, "
                         f"tokens: {n}, features: {feats.shape[0]}")
    return feats

  def embed(self, input_ids, pixel_values, image_grid_thw, pixel_values_videos=None,
            video_grid_thw=None):
    """Token embeddings with the image (video) features written over the image (video)
    placeholders in row-major order (transformers' masked_scatter). Images and videos run
    through the tower separately, as in transformers."""
    x = self.embed_tokens(input_ids)
    inputs = ((pixel_values, image_grid_thw, self.config.image_token_id, "image"),
              (pixel_values_videos, video_grid_thw, self.config.video_token_id, "video"))
    for pixels, grid, token_id, what in inputs:
      if pixels is None:
        continue
      feats = self._vision_features(pixels, grid, input_ids, token_id, what)
      is_tok = input_ids == token_id
      rank = jnp.clip(jnp.cumsum(is_tok.reshape(-1)) - 1, 0).reshape(is_tok.shape)
      x = jnp.where(is_tok[..., None], feats[rank].astype(x.dtype), x)
    return x

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               pixel_values: jax.Array | None = None,
               image_grid_thw: np.ndarray | None = None,
               pixel_values_videos: jax.Array | None = None,
               video_grid_thw: np.ndarray | None = None,
               second_per_grid_ts: np.ndarray | None = None):
    cfg = self.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.asarray(attention_mask).astype(bool)
    if (pixel_values is None) != (image_grid_thw is None):
      raise ValueError("pixel_values and image_grid_thw come together")
    if (pixel_values_videos is None) != (video_grid_thw is None):
      raise ValueError("pixel_values_videos and video_grid_thw come together")
    if second_per_grid_ts is not None and video_grid_thw is None:
      raise ValueError("second_per_grid_ts without video_grid_thw")
    x = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos,
                   video_grid_thw)
    n = cfg.layers_run
    if n > 0:
      grid = None if pixel_values is None else np.asarray(image_grid_thw)
      video_grid = None if pixel_values_videos is None else np.asarray(video_grid_thw)
      positions = mrope_positions(input_ids, mask, grid, cfg, video_grid, second_per_grid_ts)
      cos, sin = mrope_cos_sin(positions, cfg)
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
