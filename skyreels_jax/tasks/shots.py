"""Shot-aware text cross-attention inputs (model.shot_attention; data/shots.py has the text).

The tokenizer gives each text token its shot (`text_shot`: 0 for the global caption and the
template, k for the k-th <shot> tag) and the shots' spans in seconds (`shot_spans`). Here
each latent video frame gets the shot its time falls in (`video_shot`: k, or 0 outside
every shot), so the video's text cross-attention lets a frame of shot k read shot k's tokens
and the global ones (models/blocks.CrossAttention). Training and the sampler both call this.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def shot_count(config) -> int:
  """Shots the model's text cross-attention tells apart: data.max_shots_per_clip when
  model.shot_attention is on, else 0 (off)."""
  return int(config.data.max_shots_per_clip) if config.model.shot_attention else 0


def latent_frame_centres(num_frames: int, num_latent: int, temporal_factor: int) -> np.ndarray:
  """The pixel frame at the middle of each latent frame's span: latent frame f encodes
  pixel frames f*tf .. f*tf + tf - 1, or with a causal VAE (F = 1 + tf (T - 1), Wan) frame
  0 alone and then max(0, f*tf - tf + 1) .. f*tf. A still (F = T = 1) is frame 0."""
  tf = temporal_factor
  f = np.arange(num_latent)
  if num_frames == num_latent * tf:
    first, last = f * tf, f * tf + tf - 1
  elif num_frames == 1 + tf * (num_latent - 1):
    first, last = np.maximum(0, f * tf - tf + 1), f * tf
  else:
    raise ValueError(f"{num_frames} pixel frames do not make {num_latent} latent frames "
                     f"(temporal factor {tf})")
  return (first + last) / 2


def video_shots(shot_spans, num_frames: int, num_latent: int, temporal_factor: int,
                fps: float):
  """(B, num_latent) int32: the shot (1-based; 0: none) of each latent frame, by the time
  of its middle pixel frame; shot_spans (B, S, 2) seconds, (-1, -1) rows for no shot."""
  times = (latent_frame_centres(num_frames, num_latent, temporal_factor) + 0.5) / fps
  t = jnp.asarray(times, jnp.float32)[None, :, None]
  spans = jnp.asarray(shot_spans, jnp.float32)
  inside = (spans[:, None, :, 0] <= t) & (t < spans[:, None, :, 1])      # (B, T, S)
  k = jnp.arange(1, spans.shape[1] + 1, dtype=jnp.int32)
  return jnp.max(jnp.where(inside, k, 0), axis=-1).astype(jnp.int32)


def shot_inputs(config, batch: dict, text_keep, *, num_frames: int, num_latent: int,
                temporal_factor: int) -> dict:
  """The model's `text_shot` and `video_shot` for a batch (empty when shot attention is
  off). text_keep (B,) bool: the rows whose caption is the record's (caption dropout and
  edit prompts have no shots: every token is global there)."""
  if not shot_count(config):
    return {}
  keep = jnp.asarray(text_keep, bool)
  return {"text_shot": jnp.where(keep[:, None], batch["text_shot"], 0),
          "video_shot": jnp.where(keep[:, None], video_shots(
              batch["shot_spans"], num_frames, num_latent, temporal_factor,
              float(config.data.fps)), 0)}
