"""Latents behind one interface per modality.

A video autoencoder maps pixels (B, F, H, W, 3) in [-1, 1] to latents (B, T, h, w, C) and back;
an audio autoencoder maps waveforms (B, S, channels) in [-1, 1] to latents (B, Ta, Ca). Each
declares its compression so shapes are known before anything is traced:
`latent_frames(F)`, `latent_hw(H, W)`, `latent_channels` (video), `latent_length(S)`, `hop`,
`latent_channels` (audio). The config validator asks them before compiling;
models/encoders.py builds the config's autoencoders.
"""

from __future__ import annotations

KINDS_VIDEO = ("identity", "wan")
KINDS_AUDIO = ("identity", "oobleck")
