"""Classifier-free guidance with one scale per modality (video, audio)."""

from __future__ import annotations

import jax


def guide(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
  """uncond + scale * (cond - uncond); scale 1 returns cond."""
  return uncond + scale * (cond - uncond)
