"""Latents behind one interface per modality.

A video autoencoder maps pixels (B, F, H, W, 3) in [-1, 1] to latents (B, T, h, w, C) and back;
an audio autoencoder maps waveforms (B, S, channels) in [-1, 1] to latents (B, Ta, Ca). Each
declares its compression so shapes are known before anything is traced:
`latent_frames(F)`, `latent_hw(H, W)`, `latent_channels` (video), `latent_length(S)`, `hop`,
`latent_channels` (audio). The config validator asks them before compiling.
"""

from __future__ import annotations

from typing import Any

from skyreels_jax.models.autoencoders import identity


def build_video(cfg: Any):
  if cfg.kind == "identity":
    return identity.SpaceToDepthVideo(cfg.spatial_factor, cfg.temporal_factor)
  raise ValueError(f"video_ae.kind={cfg.kind!r}: choose one of ['identity']")


def build_audio(cfg: Any, channels: int):
  if cfg.kind == "identity":
    return identity.FramedAudio(cfg.hop, channels)
  raise ValueError(f"audio_ae.kind={cfg.kind!r}: choose one of ['identity']")
