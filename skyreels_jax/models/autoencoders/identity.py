"""Pixel-space "identity" autoencoders for the tiny config (SPEC section 6): exact, lossless
rearrangements, no parameters. Video: space-to-depth (and time-to-depth); audio: the waveform
cut into frames of `hop` samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.models.layers import patchify, unpatchify


class SpaceToDepthVideo:

  def __init__(self, spatial_factor: int, temporal_factor: int = 1):
    self.s, self.t = spatial_factor, temporal_factor
    self.latent_channels = 3 * spatial_factor * spatial_factor * temporal_factor
    self.temporal_factor = temporal_factor
    self.spatial_factor = spatial_factor

  def latent_frames(self, num_frames: int) -> int:
    if num_frames % self.t:
      raise ValueError(f"{num_frames} frames do not divide by the temporal factor {self.t}")
    return num_frames // self.t

  def latent_hw(self, height: int, width: int) -> tuple[int, int]:
    if height % self.s or width % self.s:
      raise ValueError(f"{height}x{width} does not divide by the spatial factor {self.s}")
    return height // self.s, width // self.s

  def pixel_shape(self, latent_shape) -> tuple[int, int, int]:
    """(frames, height, width) of the clip a (T, h, w, ...) latent decodes to (for latents
    read from disk: the black frame's latent needs its pixel size)."""
    return latent_shape[0] * self.t, latent_shape[1] * self.s, latent_shape[2] * self.s

  def encode(self, video: jax.Array) -> jax.Array:
    b, f, h, w, _ = video.shape
    tokens = patchify(video, (self.t, self.s, self.s))
    return tokens.reshape(b, f // self.t, h // self.s, w // self.s, self.latent_channels)

  def decode(self, latents: jax.Array) -> jax.Array:
    b, t, h, w, c = latents.shape
    x = latents.reshape(b, t * h * w, c)
    return jnp.clip(unpatchify(x, (t * self.t, h * self.s, w * self.s),
                               (self.t, self.s, self.s), 3), -1.0, 1.0)


class FramedAudio:

  def __init__(self, hop: int, channels: int):
    self.hop, self.channels = hop, channels
    self.latent_channels = hop * channels

  def latent_length(self, num_samples: int) -> int:
    """Frames covering the clip; the last one is zero-padded (decode returns the padded
    length; callers trim to their sample count)."""
    return -(-num_samples // self.hop)

  def num_samples(self, latent_length: int) -> int:
    """Samples a latent of `latent_length` frames decodes to."""
    return latent_length * self.hop

  def encode(self, audio: jax.Array) -> jax.Array:
    pad = self.latent_length(audio.shape[1]) * self.hop - audio.shape[1]
    if pad:
      audio = jnp.pad(audio, ((0, 0), (0, pad), (0, 0)))
    return patchify(audio, (self.hop,))

  def decode(self, latents: jax.Array) -> jax.Array:
    b, t, _ = latents.shape
    return jnp.clip(unpatchify(latents, (t * self.hop,), (self.hop,), self.channels), -1.0, 1.0)
