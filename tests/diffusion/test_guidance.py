"""Classifier-free guidance (skyreels_jax/diffusion/guidance.py)."""

import numpy as np

from skyreels_jax.diffusion import guidance


def normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_guidance_scales():
  cond, uncond = normal(30, (2, 3)), normal(31, (2, 3))
  np.testing.assert_allclose(guidance.guide(cond, uncond, 1.0), cond, atol=1e-6)
  np.testing.assert_allclose(guidance.guide(cond, uncond, 0.0), uncond, atol=1e-6)
  np.testing.assert_allclose(guidance.guide(cond, uncond, 4.0), uncond + 4.0 * (cond - uncond),
                             rtol=1e-5, atol=1e-6)
