"""The cascade refiner's condition (SPEC section 5 step 2): super-resolution + frame
interpolation. The refiner is a config of the same MMDiT (configs/tiny_refiner.py) trained
on this one task; nothing here is a second model.

Video input Concat(V, I, M):
- V the noisy HIGH-res latent of the target clip;
- I the LOW-res latents linearly upsampled onto the target latent grid, in space and time,
  with the base model's high-res keyframe latents swapped in at their latent frames;
- M = 1 at those keyframe latent frames (given exactly: no loss), 0 elsewhere.

In training the low-res clip is derived from the high-res data clip (`low_res_view`) and
both are encoded by the run's video VAE, so the condition sees the latents the base model
generates (its low-res output and its high-res keyframes live in that same latent space).

Interpolation is an explicit separable linear one (interpolation matrices), not
jax.image.resize, because the two axes need different conventions:
- time, "align corners": low-res latent frame i sits at target latent position
  i * (T_target - 1) / (T_low - 1). With endpoint frames (the 1 + 4k clips of a causal VAE)
  the first and last frames of both clips are the same instants, so this is exact
  (low frame i = target frame time_scale * i);
- space, half-pixel centres (jax.image.resize's convention, edges clamped): an area
  downsample puts low-res cell i at the centre of high-res cells [s*i, s*(i+1)).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def low_res_view(video: jax.Array, scale: int, time_scale: int) -> jax.Array:
  """(B, F, H, W, 3) high-res clip -> (B, ceil(F / time_scale), H / scale, W / scale, 3):
  every time_scale-th frame, area-downsampled by `scale` (the mean of each scale x scale
  block: no aliasing, and what a low-res render of the same scene looks like)."""
  v = video[:, ::time_scale]
  b, f, h, w, c = v.shape
  return v.reshape(b, f, h // scale, scale, w // scale, scale, c).mean(axis=(3, 5))


def low_res_frames(num_frames: int, time_scale: int) -> int:
  """Frames of the low-res view of a `num_frames` clip."""
  return len(range(0, num_frames, time_scale))


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) weights of 1D linear interpolation; positions outside the input clamp to
  its edge samples. Static (numpy): the grids are known at trace time."""
  out = np.arange(n_out, dtype=np.float64)
  if align_corners:
    pos = out * (n_in - 1) / max(n_out - 1, 1)
  else:
    pos = (out + 0.5) * n_in / n_out - 0.5
  pos = np.clip(pos, 0.0, n_in - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m.astype(np.float32)


def upsample_latents(z: jax.Array, grid: Sequence[int]) -> jax.Array:
  """(B, T, h, w, C) -> (B, *grid, C): separable linear interpolation, align-corners in time
  and half-pixel in space (module docstring)."""
  _, t, h, w, _ = z.shape
  mt = interpolation_matrix(t, grid[0], align_corners=True)
  mh = interpolation_matrix(h, grid[1], align_corners=False)
  mw = interpolation_matrix(w, grid[2], align_corners=False)
  hi = jax.lax.Precision.HIGHEST   # weights are exact; keep them so on bf16-pass hardware
  z = jnp.einsum("Tt,bthwc->bThwc", mt, z, precision=hi)
  z = jnp.einsum("Hh,bthwc->btHwc", mh, z, precision=hi)
  return jnp.einsum("Ww,bthwc->bthWc", mw, z, precision=hi)


def keyframe_latent_frames(video_ae, frames: Sequence[int]) -> tuple[int, ...]:
  """Pixel frame indices -> the (sorted, distinct) latent frames that hold them. A causal
  1 + t*k VAE (Wan) has latent 0 = frame 0 and latent j >= 1 = frames t*(j-1)+1 .. t*j, so
  frame f is in latent ceil(f / t); a non-causal one (identity space-to-depth) has latent j =
  frames t*j .. t*j + t - 1, so f // t. Causal is told by one latent decoding to one frame;
  with t = 1 both give f."""
  t = video_ae.temporal_factor
  causal = video_ae.pixel_shape((1, 1, 1))[0] == 1
  return tuple(sorted({-(-int(f) // t) if causal else int(f) // t for f in frames}))


def refiner_condition(z_low: jax.Array, target_grid: Sequence[int], keyframe_latents: jax.Array,
                      keyframe_index: Sequence[int]):
  """(condition latent (B, *target_grid, C), keep mask (B, *target_grid, 1)).

  z_low: (B, T_low, h_low, w_low, C) low-res latents; keyframe_latents: (B, K, h, w, C)
  high-res latent frames placed at target latent frames keyframe_index (K static ints).
  The condition is the upsampled z_low with the keyframes swapped in; keep = 1 exactly at
  the keyframe frames."""
  cond = upsample_latents(z_low, target_grid)
  keep = np.zeros((z_low.shape[0], *target_grid, 1), np.float32)
  idx = list(keyframe_index)
  if idx:
    cond = cond.at[:, idx].set(keyframe_latents.astype(cond.dtype))
    keep[:, idx] = 1.0
  return cond, jnp.asarray(keep)


def refiner_video(video: jax.Array, rng: jax.Array, *, refiner, video_ae):
  """Training's video stream pieces from a high-res clip (B, F, H, W, 3) in [-1, 1]:
  (target z0, condition latent, keep mask). `refiner` is config.refiner.

  refiner.noise_low > 0 augments the low-res latents (before upsampling, not the
  keyframes) to (1 - n) z_low + n eps, the flow-matching path at t = 1 - n: the standard
  cascade trick (noise conditioning augmentation) so the refiner does not copy the base
  model's low-res artefacts; the sampler must feed the same level."""
  z0 = video_ae.encode(video)
  z_low = video_ae.encode(low_res_view(video, refiner.scale, refiner.time_scale))
  if refiner.noise_low > 0:
    eps = jax.random.normal(rng, z_low.shape, z_low.dtype)
    z_low = (1.0 - refiner.noise_low) * z_low + refiner.noise_low * eps
  idx = keyframe_latent_frames(video_ae, refiner.keyframes)
  cond, keep = refiner_condition(z_low, z0.shape[1:4], z0[:, list(idx)], idx)
  return z0, cond, keep
