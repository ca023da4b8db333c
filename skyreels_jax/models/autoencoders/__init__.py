"""Latents behind one interface per modality.

A video autoencoder maps pixels (B, F, H, W, 3) in [-1, 1] to latents (B, T, h, w, C) and back;
an audio autoencoder maps waveforms (B, S, channels) in [-1, 1] to latents (B, Ta, Ca). Each
declares its compression so shapes are known before anything is traced:
`latent_frames(F)`, `latent_hw(H, W)`, `latent_channels` (video), `latent_length(S)`, `hop`,
`latent_channels` (audio). The config validator asks them before compiling;
models/encoders.py builds the config's autoencoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS_VIDEO = ("identity", "wan")
KINDS_AUDIO = ("identity", "oobleck")


def cast_params(params, dtype):
  """Floating leaves of a params state (arrays, or ShapeDtypeStructs of a shapes-only build)
  in `dtype`: a bf16 frozen autoencoder holds bf16 weights (half the memory)."""
  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)
  return jax.tree.map(cast, params)
