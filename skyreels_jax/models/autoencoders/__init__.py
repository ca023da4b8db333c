"""Latents behind one interface per modality.

A video autoencoder maps pixels (B, F, H, W, 3) in [-1, 1] to latents (B, T, h, w, C) and back;
an audio autoencoder maps waveforms (B, S, channels) in [-1, 1] to latents (B, Ta, Ca). Each
declares its compression so shapes are known before anything is traced:
`latent_frames(F)`, `latent_hw(H, W)`, `latent_channels` (video), `latent_length(S)`, `hop`,
`latent_channels` (audio). The config validator asks them before compiling.
"""

from __future__ import annotations

from typing import Any

from skyreels_jax.models.autoencoders import identity, tiling

KINDS_VIDEO = ("identity", "wan")
KINDS_AUDIO = ("identity", "oobleck")


def _module(cfg: Any, kind: str, weights: bool, published_if_missing: bool):
  from skyreels_jax.models import frozen  # pylint: disable=g-import-not-at-top
  return frozen.load(kind, cfg.get("path", ""), weights=weights,
                     published_if_missing=published_if_missing)


def build_video(cfg: Any, *, weights: bool = True, published_if_missing: bool = False):
  """The config's video autoencoder; `weights=False`: shapes only (models/frozen.py)."""
  if cfg.kind == "identity":
    return identity.SpaceToDepthVideo(cfg.spatial_factor, cfg.temporal_factor)
  if cfg.kind == "wan":
    from skyreels_jax.models.autoencoders import wan_vae  # pylint: disable=g-import-not-at-top
    names = ("tile_height", "tile_width", "tile_stride_height", "tile_stride_width")
    tile_height, tile_width, stride_height, stride_width = (cfg.get(n, 0) for n in names)
    # checked (at Wan 2.1's factor 8) before the checkpoint is read, so a bad field is
    # reported first; the autoencoder checks again at its checkpoint's factor
    tiling.check_tiling((tile_height, tile_width), (stride_height, stride_width),
                        wan_vae.WanVAEConfig().spatial_factor,
                        names=[f"video_ae.{n}" for n in names])
    return wan_vae.WanVideoAutoencoder(_module(cfg, "wan_vae", weights, published_if_missing),
                                       encode_chunk=cfg.get("encode_chunk", 1),
                                       decode_chunk=cfg.get("decode_chunk", 1),
                                       tile_size=(tile_height, tile_width),
                                       tile_stride=(stride_height, stride_width))
  raise ValueError(f"video_ae.kind={cfg.kind!r}: choose one of {list(KINDS_VIDEO)}")


def build_audio(cfg: Any, channels: int, *, weights: bool = True,
                published_if_missing: bool = False):
  """The config's audio autoencoder; `weights=False`: shapes only (models/frozen.py)."""
  if cfg.kind == "identity":
    return identity.FramedAudio(cfg.hop, channels)
  if cfg.kind == "oobleck":
    from skyreels_jax.models.autoencoders import oobleck_vae  # pylint: disable=g-import-not-at-top
    ae = oobleck_vae.OobleckAudioAutoencoder(
        _module(cfg, "oobleck_vae", weights, published_if_missing))
    if ae.channels != channels:
      raise ValueError(f"audio_ae: the Oobleck VAE at {cfg.path} is {ae.channels}-channel, "
                       f"data.audio_channels is {channels}")
    return ae
  raise ValueError(f"audio_ae.kind={cfg.kind!r}: choose one of {list(KINDS_AUDIO)}")
