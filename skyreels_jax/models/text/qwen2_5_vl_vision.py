"""The Qwen2.5-VL vision tower in NNX: Conv3d patch embedding, windowed attention blocks with
2D rotary embedding (full attention at `fullatt_block_indexes`), the 2x2 patch merger.

Layout and numerics follow transformers' `Qwen2_5_VisionTransformerPretrainedModel` so its
weights map one to one (tools/qwen_mapping.py). The token layout depends only on
`image_grid_thw`, so it is computed on the host in numpy (`VisionLayout`) and the shapes are
static under jit: the window permutation, the rotary positions and the attention segments.
All images of a batch run as one packed sequence whose attention is block-diagonal (per
frame for full attention, per window otherwise), as transformers' `cu_seqlens` make it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.models.layers import RMSNorm, dense

NEG_INF = -1e30  # finite: a row whose keys are all masked stays NaN-free


@dataclasses.dataclass(frozen=True)
class Qwen25VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  out_hidden_size: int = 3584
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rope_theta: float = 10000.0

  @property
  def patch_dim(self) -> int:
    """Length of one pixel_values row: C * temporal_patch * patch * patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class VisionLayout:
  """Host-side token bookkeeping for a list of (t, h, w) patch grids.

  window_index  (N / m^2,) merge units in window order (transformers' get_vision_window_index)
  positions     (N, 2) (h, w) patch coordinates, in window order
  window_seg    (N,) window id of each token, in window order
  frame_seg     (N,) frame id of each token, in window order (full attention is per frame)
  """
  window_index: np.ndarray
  positions: np.ndarray
  window_seg: np.ndarray
  frame_seg: np.ndarray


def _segments(cu: np.ndarray, n: int) -> np.ndarray:
  return np.searchsorted(np.asarray(cu)[1:], np.arange(n), side="right").astype(np.int32)


def vision_layout(grid_thw: np.ndarray, cfg: Qwen25VisionConfig) -> VisionLayout:
  """Ports transformers' vision_utils (position ids, cu_seqlens, window index) to numpy."""
  m = cfg.spatial_merge_size
  grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  positions, window_index, cu_window, cu_frames = [], [], [0], [0]
  offset = 0
  win = cfg.window_size // m // cfg.patch_size
  for t, h, w in grid_thw.tolist():
    if h % m or w % m:
      raise ValueError(f"image_grid_thw {(t, h, w)}: h and w must divide spatial_merge_size={m}")
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = (h // m, m, w // m, m)
    hw = np.stack([hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1),
                   wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)], -1)
    positions.append(np.tile(hw, (t, 1)))
    cu_frames.extend(cu_frames[-1] + h * w * np.arange(1, t + 1))
    lh, lw = h // m, w // m
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = win - lh % win, win - lw % win
    nwh, nww = (lh + pad_h) // win, (lw + pad_w) // win
    padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
    padded = padded.reshape(t, nwh, win, nww, win).transpose(0, 1, 3, 2, 4)
    padded = padded.reshape(t, nwh * nww, win * win)
    seqlens = (padded != -100).sum(-1).reshape(-1)
    flat = padded.reshape(-1)
    window_index.append(flat[flat != -100] + offset)
    cu_window.extend((np.cumsum(seqlens) * m * m + cu_window[-1]).tolist())
    offset += t * lh * lw
  window_index = np.concatenate(window_index)
  n = int(window_index.size * m * m)
  # Tokens in window order: merge unit window_index[j] moves to slot j (its m^2 tokens with it).
  token_order = (window_index[:, None] * m * m + np.arange(m * m)[None]).reshape(-1)
  cu_window = np.array([k for i, k in enumerate(cu_window) if i == 0 or k != cu_window[i - 1]])
  return VisionLayout(window_index=window_index.astype(np.int32),
                      positions=np.concatenate(positions)[token_order].astype(np.int32),
                      window_seg=_segments(cu_window, n), frame_seg=_segments(cu_frames, n))


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (..., S, H, D), cos/sin (..., S, D): transformers' rotate_half convention, float32."""
  xf = x.astype(jnp.float32)
  out = xf * cos[..., None, :] + rotate_half(xf) * sin[..., None, :]
  return out.astype(x.dtype)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
  """q (B, S, H, D), k/v (B, T, KV, D) with H a multiple of KV (grouped-query attention,
  without repeating K/V); `allowed` (B, S, T) bool. Softmax in float32, as transformers."""
  b, s, h, d = q.shape
  kv = k.shape[2]
  qg = q.reshape(b, s, kv, h // kv, d)
  scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(allowed[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
  return out.reshape(b, s, h, d)


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x)): the SwiGLU MLP of both towers (biased in the vision one)."""

  def __init__(self, dim: int, hidden: int, *, use_bias: bool, rngs: nnx.Rngs, dtype,
               param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias)
    self.gate_proj = dense(dim, hidden, ("embed", "mlp"), **kw)
    self.up_proj = dense(dim, hidden, ("embed", "mlp"), **kw)
    self.down_proj = dense(hidden, dim, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionAttention(nnx.Module):

  def __init__(self, cfg: Qwen25VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.num_heads = cfg.num_heads
    self.qkv = dense(cfg.hidden_size, 3 * cfg.hidden_size, ("embed", "heads"), **kw)
    self.proj = dense(cfg.hidden_size, cfg.hidden_size, ("heads", "embed"), **kw)

  def __call__(self, x, cos, sin, allowed):
    n = x.shape[0]
    q, k, v = jnp.moveaxis(self.qkv(x).reshape(n, 3, self.num_heads, -1), 1, 0)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = masked_attention(q[None], k[None], v[None], allowed[None])[0]
    return self.proj(out.reshape(n, -1))


class VisionBlock(nnx.Module):

  def __init__(self, cfg: Qwen25VisionConfig, rngs: nnx.Rngs, *, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype)
    self.norm2 = RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype)
    self.attn = VisionAttention(cfg, **kw)
    self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, use_bias=True, **kw)

  def __call__(self, x, ctx, is_full):
    allowed = jnp.where(is_full, ctx["full"], ctx["window"])
    x = x + self.attn(self.norm1(x), ctx["cos"], ctx["sin"], allowed)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each m x m group of tokens concatenated -> Linear, GELU, Linear."""

  def __init__(self, cfg: Qwen25VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.width = cfg.hidden_size * cfg.spatial_merge_size ** 2
    self.ln_q = RMSNorm(cfg.hidden_size, eps=1e-6, param_dtype=param_dtype)
    self.mlp_0 = dense(self.width, self.width, ("mlp", "mlp"), **kw)
    self.mlp_2 = dense(self.width, cfg.out_hidden_size, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.ln_q(x).reshape(-1, self.width)
    return self.mlp_2(jax.nn.gelu(self.mlp_0(x), approximate=False))


def stacked_layers(n: int, make, rngs: nnx.Rngs):
  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return make(r)
  return create(rngs)


class VisionTower(nnx.Module):
  """pixel_values (N, patch_dim) + grid_thw (host ints) -> merged tokens (N / m^2, out)."""

  def __init__(self, cfg: Qwen25VisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    # Conv3d with kernel == stride over a whole patch is a Linear over the flattened patch.
    self.patch_embed = dense(cfg.patch_dim, cfg.hidden_size, ("patch", "embed"),
                             use_bias=False, rngs=rngs, **kw)
    self.blocks = stacked_layers(cfg.depth, lambda r: VisionBlock(cfg, r, **kw), rngs)
    self.merger = PatchMerger(cfg, rngs=rngs, **kw)

  def rotary(self, positions: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Axial 2D rope: head_dim/4 frequencies for h, the same for w, the pair repeated."""
    head_dim = self.cfg.hidden_size // self.cfg.num_heads
    spatial = head_dim // 2
    inv_freq = 1.0 / (self.cfg.rope_theta ** (np.arange(0, spatial, 2, dtype=np.float32)
                                              / spatial))
    freqs = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq     # (N, 2, hd/4)
    freqs = freqs.reshape(freqs.shape[0], -1)                              # (N, hd/2): h | w
    freqs = jnp.concatenate([freqs, freqs], -1)
    return jnp.cos(freqs), jnp.sin(freqs)

  def __call__(self, pixel_values: jax.Array, grid_thw: np.ndarray) -> jax.Array:
    cfg = self.cfg
    layout = vision_layout(np.asarray(grid_thw), cfg)
    unit = cfg.spatial_merge_size ** 2
    x = self.patch_embed(pixel_values.astype(self.patch_embed.dtype or jnp.float32))
    n = x.shape[0]
    if n != layout.window_index.size * unit:
      raise ValueError(f"pixel_values has {n} patches, image_grid_thw implies "
                       f"{layout.window_index.size * unit}")
    x = x.reshape(-1, unit, x.shape[-1])[layout.window_index].reshape(n, -1)
    cos, sin = self.rotary(layout.positions)
    ctx = {"cos": cos, "sin": sin,
           "window": jnp.asarray(layout.window_seg[:, None] == layout.window_seg[None]),
           "full": jnp.asarray(layout.frame_seg[:, None] == layout.frame_seg[None])}
    is_full = jnp.asarray([i in cfg.fullatt_block_indexes for i in range(cfg.depth)])
    graphdef, state = nnx.split(self.blocks)

    def body(h, xs):
      layer_state, full = xs
      return nnx.merge(graphdef, layer_state)(h, ctx, full), None

    x, _ = jax.lax.scan(body, x, (state, is_full))
    merged = self.merger(x)
    return merged[np.argsort(layout.window_index)]
