"""Analytic FLOPs of the MMDiT: 2 x the multiply-adds of every matmul, attention's QK^T and
PV included; norms, softmax, activations and RoPE are not counted (a few % of the total at
useful widths). A training step (forward + backward) is 3 x the forward.

Used by benchmarks/ (achieved FLOP/s) and the AOT tool (model FLOPs utilisation). The counts
follow skyreels_jax/models/{mmdit,blocks,layers}.py one matmul at a time.
"""

from __future__ import annotations

import math

from skyreels_jax.models.mmdit import MMDiTConfig


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
  return 2 * rows * fan_in * fan_out


def _attention(b: int, q_len: int, kv_len: int, width: int) -> int:
  """QK^T and PV over all heads (heads x head_dim = width)."""
  return 2 * (2 * b * q_len * kv_len * width)


def _block(cfg: MMDiTConfig, b: int, tokens: int, text_len: int, dual: bool) -> int:
  """One dual- or single-stream block over [tokens; text]: both have QKV (3d), output (d)
  and an MLP of 2 x d x mlp_dim per token; they differ only in the AdaLN width."""
  d, m, n = cfg.width, int(cfg.width * cfg.mlp_ratio), tokens + text_len
  adaln = 2 * _linear(b, d, 6 * d) if dual else _linear(b, d, 3 * d)
  if dual:   # separate weights per stream, same token count in total
    proj = _linear(n, d, 3 * d) + _linear(n, d, d) + _linear(n, d, m) + _linear(n, m, d)
  else:      # to_q/k/v + proj_mlp, then proj_out over [attn; mlp]
    proj = _linear(n, d, 3 * d) + _linear(n, d, m) + _linear(n, d + m, d)
  return adaln + b * proj + _attention(b, n, n, d)


def _cross(cfg: MMDiTConfig, b: int, q_len: int, kv_len: int) -> int:
  """CrossAttention: Q and output over the queries, K and V over the context."""
  d = cfg.width
  return b * (2 * _linear(q_len, d, d) + 2 * _linear(kv_len, d, d)) + _attention(
      b, q_len, kv_len, d)


def _branch_io(cfg: MMDiTConfig, b: int, tokens: int, target_tokens: int, text_len: int,
               in_features: int, out_features: int) -> int:
  d = cfg.width
  cond = (_linear(b, 256, d) + _linear(b, d, d)                     # timestep embedder
          + _linear(b, cfg.text_dim, d) + _linear(b, d, d))         # pooled-text embedder
  if cfg.guidance_embed:
    cond += _linear(b, 256, d) + _linear(b, d, d)
  return (_linear(b * tokens, in_features, d) + _linear(b * text_len, cfg.text_dim, d) + cond
          + _linear(b, d, 2 * d) + _linear(b * target_tokens, d, out_features))


def mmdit_forward_flops(cfg: MMDiTConfig, *, batch: int, video_tokens: int, text_len: int,
                        audio_tokens: int = 0, video_ref_tokens: int = 0,
                        audio_ref_tokens: int = 0) -> int:
  """Forward FLOPs of MMDiT.__call__. Token counts are after patching; `*_ref_tokens` are
  prepended references (they run through every block but not through the output head)."""
  b, L = batch, text_len
  sv = video_tokens + video_ref_tokens
  pv = math.prod(cfg.video_patch)
  cv = cfg.video_latent_channels
  total = _branch_io(cfg, b, sv, video_tokens, L, (2 * cv + 1) * pv, cv * pv)
  per_dual = _block(cfg, b, sv, L, dual=True)
  per_single = _block(cfg, b, sv, L, dual=False)
  if cfg.text_cross_attention:
    per_dual += _cross(cfg, b, sv, L)
    per_single += _cross(cfg, b, sv, L)
  if cfg.use_audio:
    sa = audio_tokens + audio_ref_tokens
    pa, ca = cfg.audio_patch_size, cfg.audio_latent_channels
    total += _branch_io(cfg, b, sa, audio_tokens, L, (2 * ca + 1) * pa, ca * pa)
    av = _cross(cfg, b, sa, sv) + _cross(cfg, b, sv, sa)   # a <- v, then v <- a
    per_dual += _block(cfg, b, sa, L, dual=True) + av
    per_single += _block(cfg, b, sa, L, dual=False) + av
  return total + cfg.num_dual_blocks * per_dual + cfg.num_single_blocks * per_single


def mmdit_train_flops(cfg: MMDiTConfig, **tokens) -> int:
  """Forward + backward FLOPs of one training step (3 x forward; no remat recompute).
  Keyword arguments as `mmdit_forward_flops`."""
  return 3 * mmdit_forward_flops(cfg, **tokens)
