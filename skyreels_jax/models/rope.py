"""Rotary position embeddings: 3D (t, h, w) for video, 1D for audio, both on one timeline.

Positions are float arrays (S, n_axes) shared by the batch. The rotation matches diffusers'
`get_1d_rotary_pos_embed(use_real=True)` + `apply_rotary_emb` (interleaved pairs), so video
attention is weight-compatible with HunyuanVideo.

Timeline: video token t-index i sits at i video tokens; an audio token j sits at
j * audio_time_scale, where audio_time_scale = video token rate / audio token rate. Both
streams therefore give the same position to the same moment (SPEC section 1).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rope_cos_sin(positions: jax.Array, axes_dim: Sequence[int], theta: float
                 ) -> tuple[jax.Array, jax.Array]:
  """positions (S, n_axes) -> cos, sin of shape (S, sum(axes_dim)), pairs interleaved."""
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim == 1:
    positions = positions[:, None]
  if positions.shape[-1] != len(axes_dim):
    raise ValueError(f"positions have {positions.shape[-1]} axes, axes_dim has {len(axes_dim)}")
  cos, sin = [], []
  for axis, dim in enumerate(axes_dim):
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    angles = positions[:, axis:axis + 1] * inv_freq[None]          # (S, dim/2)
    cos.append(jnp.repeat(jnp.cos(angles), 2, axis=-1))
    sin.append(jnp.repeat(jnp.sin(angles), 2, axis=-1))
  return jnp.concatenate(cos, -1), jnp.concatenate(sin, -1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate x (B, S, H, D) by (S, D) cos/sin; computed in float32."""
  xf = x.astype(jnp.float32)
  pairs = xf.reshape(*xf.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(xf.shape)
  out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
  return out.astype(x.dtype)


def video_positions(grid: Sequence[int], num_ref_frames: int = 0) -> np.ndarray:
  """(t, h, w) positions of a (T, H, W) token grid, preceded by `num_ref_frames` reference
  frames of the same spatial grid at negative times -N_ref .. -1. Shape (S, 3)."""
  t, h, w = grid
  ts = np.arange(-num_ref_frames, t, dtype=np.float32)
  tt, hh, ww = np.meshgrid(ts, np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing="ij")
  return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=-1)


def keyframe_positions(times, keyframe_grid: Sequence[int],
                       video_grid: Sequence[int]) -> jax.Array:
  """(t, h, w) positions of keyframe tokens (SPEC section 5, [ours]): keyframe k at the
  (possibly fractional) token time `times[k]` (static ints or a traced (K,) array), its
  (Hk, Wk) token grid scaled onto the (H, W) grid of the video stream, so a keyframe token
  sits where its pixels are in the video's frame. (K * Hk * Wk, 3)."""
  hk, wk = keyframe_grid
  h, w = video_grid
  times = jnp.asarray(times, jnp.float32)
  hh, ww = np.meshgrid(np.arange(hk, dtype=np.float32) * (h / hk),
                       np.arange(wk, dtype=np.float32) * (w / wk), indexing="ij")
  space = np.stack([hh.ravel(), ww.ravel()], axis=-1)                    # (Hk * Wk, 2)
  tt = jnp.repeat(times, space.shape[0])[:, None]
  return jnp.concatenate([tt, jnp.tile(jnp.asarray(space), (times.shape[0], 1))], axis=-1)


def audio_positions(num_tokens: int, time_scale: float, num_ref_tokens: int = 0) -> np.ndarray:
  """1D positions of audio tokens on the video timeline, references at negative indices.
  Shape (S, 1)."""
  idx = np.arange(-num_ref_tokens, num_tokens, dtype=np.float32)
  return (idx * time_scale)[:, None]


def audio_time_scale(*, fps: float, video_temporal_factor: int, patch_size_t: int,
                     sample_rate: int, audio_hop: int, audio_patch_size: int) -> float:
  """Video token rate / audio token rate, from the actual rates (never hard-coded).

  E.g. 16 fps, 4x temporal VAE, 44.1 kHz and a 1024-sample audio hop give
  4 / 43.07 ~= 21/218, the paper's 5-second example.
  """
  video_rate = fps / (video_temporal_factor * patch_size_t)
  audio_rate = sample_rate / (audio_hop * audio_patch_size)
  return float(video_rate / audio_rate)
