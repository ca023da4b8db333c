"""Latents behind one interface per modality.

A video autoencoder maps pixels (B, F, H, W, 3) in [-1, 1] to latents (B, T, h, w, C) and back;
an audio autoencoder maps waveforms (B, S, channels) in [-1, 1] to latents (B, Ta, Ca). Each
declares its compression so shapes are known before anything is traced:
`latent_frames(F)`, `latent_hw(H, W)`, `latent_channels` (video), `latent_length(S)`, `hop`,
`latent_channels` (audio). The config validator asks them before compiling.
"""

from __future__ import annotations

import functools
from typing import Any

from skyreels_jax.models.autoencoders import identity

KINDS_VIDEO = ("identity", "wan")
KINDS_AUDIO = ("identity", "oobleck")


@functools.lru_cache(maxsize=4)
def _restore(path: str, kind: str):
  """A converted checkpoint's module, read once per process (validation, the trainer and the
  sampler all ask for it)."""
  from skyreels_jax.tools import convert  # pylint: disable=g-import-not-at-top
  if not path:
    raise ValueError(f"the {kind} autoencoder needs a path: python -m skyreels_jax.tools.convert "
                     f"--kind={kind} --src=DIFFUSERS_FOLDER --dst=DIR, then set the config's "
                     "path to DIR")
  try:
    return convert.restore(path, kind)
  except FileNotFoundError as e:
    raise ValueError(str(e)) from None


def build_video(cfg: Any):
  if cfg.kind == "identity":
    return identity.SpaceToDepthVideo(cfg.spatial_factor, cfg.temporal_factor)
  if cfg.kind == "wan":
    from skyreels_jax.models.autoencoders import wan_vae  # pylint: disable=g-import-not-at-top
    return wan_vae.WanVideoAutoencoder(_restore(cfg.get("path", ""), "wan_vae"),
                                       encode_chunk=cfg.get("encode_chunk", 1),
                                       decode_chunk=cfg.get("decode_chunk", 1))
  raise ValueError(f"video_ae.kind={cfg.kind!r}: choose one of {list(KINDS_VIDEO)}")


def build_audio(cfg: Any, channels: int):
  if cfg.kind == "identity":
    return identity.FramedAudio(cfg.hop, channels)
  if cfg.kind == "oobleck":
    from skyreels_jax.models.autoencoders import oobleck_vae  # pylint: disable=g-import-not-at-top
    ae = oobleck_vae.OobleckAudioAutoencoder(_restore(cfg.get("path", ""), "oobleck_vae"))
    if ae.channels != channels:
      raise ValueError(f"audio_ae: the Oobleck VAE at {cfg.path} is {ae.channels}-channel, "
                       f"data.audio_channels is {channels}")
    return ae
  raise ValueError(f"audio_ae.kind={cfg.kind!r}: choose one of {list(KINDS_AUDIO)}")
