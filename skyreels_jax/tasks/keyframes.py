"""The cascade base's high-res keyframes (SPEC section 5 step 1, [ours] layout).

The base model generates, jointly, every frame at LOW resolution (the video stream) and a
few KEYFRAMES at HIGH resolution (extra video tokens: models/mmdit.py `keyframes`), plus the
audio. In training the data clip is the high-res one (data.height / width); the low-res
video is its area-downsampled view (tasks/refiner.low_res_view, the refiner's low-res input
too) and the keyframes are single high-res frames, each VAE-encoded alone as a 1-frame clip
(a still image: one latent frame of the causal VAE, as I2V's first frame). They are noised
with the video's timestep and carry a loss (`keyframes.loss_weight`); they are always
generated (keep = 0), also when a task keeps low-res frames, so the refiner always receives
the base model's own high-res frames.

Which frames: `keyframes.frames` (pixel indices) or `keyframes.count` spread evenly over the
clip, at most one per latent frame of the low-res video (a keyframe's temporal RoPE index is
that latent frame).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from skyreels_jax.core import check

from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.tasks.masks import channel_concat
from skyreels_jax.tasks.refiner import keyframe_latent_frames, low_res_view, still_latents


def enabled(config) -> bool:
  return int(config.keyframes.count) > 0


def keyframe_frames(keyframes_config, num_frames: int, video_ae) -> tuple[tuple[int, ...],
                                                                          tuple[int, ...]]:
  """(pixel frames, their latent frames) of the keyframes of a `num_frames` clip: the
  configured frames (or `count` evenly spaced ones) that fall in the clip, the first of each
  latent frame."""
  frames = tuple(int(f) for f in keyframes_config.frames)
  if not frames:
    frames = tuple(int(round(f)) for f in np.linspace(0, num_frames - 1,
                                                      int(keyframes_config.count)))
  pixel, latent = [], []
  for f in frames:
    if not 0 <= f < num_frames:
      continue
    (t,) = keyframe_latent_frames(video_ae, (f,))
    if t not in latent:
      pixel.append(f)
      latent.append(t)
  return tuple(pixel), tuple(latent)


def low_res(video: jax.Array, keyframes_config) -> jax.Array:
  """The base model's low-res video stream of a high-res clip (all frames)."""
  return low_res_view(video, int(keyframes_config.scale), 1)


def keyframe_latents(video_ae, video: jax.Array, frames: Sequence[int]) -> jax.Array:
  """(B, K, h, w, C): each high-res frame of `frames` encoded alone (a still)."""
  return still_latents(video_ae, video[:, list(frames)])


def keyframe_stream(z0: jax.Array, eps: jax.Array, t: jax.Array, drop: jax.Array,
                    empty: jax.Array):
  """Model input Concat(z_t, I, M) of the keyframes (nothing kept: I is the black still's
  latent, M = 0) and their loss mask; a dropped video stream (T2A) drops them too (t = 0,
  no loss), as tasks/examples._stream does."""
  shape = (-1,) + (1,) * (z0.ndim - 1)
  t = jnp.where(drop, 0.0, t)
  keep = jnp.zeros(z0.shape[:-1] + (1,), z0.dtype)
  x = channel_concat(fm.noisy(z0, eps, t), jnp.broadcast_to(empty, z0.shape).astype(z0.dtype),
                     keep)
  return x, jnp.maximum(keep, drop.reshape(shape).astype(keep.dtype))


def check_config(config) -> None:
  """keyframes.*: a low-res video stream the model patches and keyframes in the clip."""
  k, d = config.keyframes, config.data
  if not (k.count or k.frames):
    return
  check(isinstance(k.count, int) and k.count >= 0, "keyframes.count", "must be an int >= 0")
  check(isinstance(k.scale, int) and k.scale >= 1, "keyframes.scale", "must be an int >= 1")
  check(d.height % k.scale == 0 and d.width % k.scale == 0, "keyframes.scale",
        f"data {d.height}x{d.width} (the high-res clip) does not divide by {k.scale}")
  bad = [f for f in k.frames if not (isinstance(f, int) and 0 <= f < d.num_frames)]
  check(not bad, "keyframes.frames", f"{bad} not frame indices in [0, {d.num_frames})")
  check(config.model.patch_size_t == 1, "model.patch_size_t",
        "keyframes are single latent frames: need 1")
  check(d.format == "clips", "data.format", "keyframes are cut from pixel clips")
  check(not config.refiner.enabled, "keyframes.count",
        "the refiner takes the base model's keyframes; it does not make them")
