"""The cascade refiner's condition (SPEC section 5 step 2): super-resolution + frame
interpolation. The refiner is a config of the same MMDiT (configs/tiny_refiner.py) trained
on this one task; nothing here is a second model.

Video input Concat(V, I, M):
- V the noisy HIGH-res latent of the target clip;
- I the LOW-res latents linearly upsampled onto the target latent grid, in space and time;
- M = 0 (every target latent is generated and carries loss).

Keyframes (the base model's high-res stills) are their own video tokens, Concat(k, k, 1)
like a reference (never noised, no loss), each at the temporal RoPE position of its pixel
frame, `frame / temporal_factor` (models/mmdit.py `keyframes`). They are not swapped into a
latent frame: with a causal 4x VAE a latent frame covers 4 pixel frames and a still's latent
is not theirs. A still is encoded alone, exactly as the base model's keyframes are (one
latent frame: `still_latents`). In training the `refiner.num_keyframes` frames are drawn at
random per batch over the clip, so the refiner learns keyframes at any position of a clip
of its training length; the cascade checks that the base's keyframes fall there
(sample/cascade.py).

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

from skyreels_jax.core import ConfigError, check


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
  causal = still_frames(video_ae) == 1
  return tuple(sorted({-(-int(f) // t) if causal else int(f) // t for f in frames}))


def still_frames(video_ae) -> int:
  """Pixel frames of a still image as a clip of one latent frame: 1 for a causal VAE (its
  first latent is one frame), the temporal factor for a non-causal one (the image repeated)."""
  return int(video_ae.pixel_shape((1, 1, 1))[0])


def still_latents(video_ae, images: jax.Array) -> jax.Array:
  """(B, K, H, W, 3) images -> (B, K, h, w, C): each encoded alone as a one-latent-frame clip
  (a still). Base keyframes, refiner keyframes and image references all use this, in
  training and at sampling."""
  b, k = images.shape[:2]
  clips = jnp.repeat(images.reshape(b * k, 1, *images.shape[2:]), still_frames(video_ae), 1)
  z = video_ae.encode(clips)
  return z.reshape(b, k, *z.shape[2:])


def keyframe_positions(video_ae, frames) -> jax.Array:
  """Temporal RoPE positions (latent frame units) of keyframes at pixel `frames` (static
  ints or a traced array): frame / temporal_factor. Exact for frame 0 and every frame that
  ends a latent frame of a causal VAE (4j -> j); in between it sits between its neighbours."""
  return jnp.asarray(frames, jnp.float32) / video_ae.temporal_factor


def draw_keyframe_frames(rng: jax.Array, num_frames: int, count: int) -> jax.Array:
  """`count` distinct pixel frames of a `num_frames` clip, uniformly at random, sorted: the
  refiner's training keyframes (one draw per batch: positions are shared by the batch)."""
  return jnp.sort(jax.random.choice(rng, num_frames, (count,), replace=False))


def refiner_condition(z_low: jax.Array, target_grid: Sequence[int]):
  """(condition latent (B, *target_grid, C), keep mask (B, *target_grid, 1) of zeros): the
  low-res latents upsampled onto the target grid; every target latent is generated."""
  cond = upsample_latents(z_low, target_grid)
  return cond, jnp.zeros((*cond.shape[:-1], 1), cond.dtype)


def refiner_video(video: jax.Array, rng: jax.Array, *, refiner, video_ae, frames=None):
  """Training's video stream pieces from a high-res clip (B, F, H, W, 3) in [-1, 1]: a dict
  of the target z0, the condition latent and keep mask, and the keyframes (stills of
  `frames`, default `refiner.num_keyframes` random frames) with their RoPE positions.
  `refiner` is config.refiner.

  refiner.noise_low > 0 augments the low-res latents (before upsampling, not the
  keyframes) to (1 - n) z_low + n eps, the flow-matching path at t = 1 - n: the standard
  cascade trick (noise conditioning augmentation) so the refiner does not copy the base
  model's low-res artefacts; the sampler must feed the same level."""
  k_noise, k_frames = jax.random.split(rng)
  z0 = video_ae.encode(video)
  z_low = video_ae.encode(low_res_view(video, refiner.scale, refiner.time_scale))
  if refiner.noise_low > 0:
    eps = jax.random.normal(k_noise, z_low.shape, z_low.dtype)
    z_low = (1.0 - refiner.noise_low) * z_low + refiner.noise_low * eps
  cond, keep = refiner_condition(z_low, z0.shape[1:4])
  out = dict(z0=z0, cond=cond, keep=keep)
  count = int(refiner.num_keyframes)
  if frames is None and count:
    frames = draw_keyframe_frames(k_frames, video.shape[1], count)
  if frames is not None:
    frames = jnp.asarray(frames, jnp.int32)
    out["keyframes"] = still_latents(video_ae, jnp.take(video, frames, axis=1))
    out["keyframe_times"] = keyframe_positions(video_ae, frames)
  return out


def start_time(config) -> float:
  """refiner.start_t of a refiner run, 0.0 otherwise (sampling from noise)."""
  return float(config.refiner.get("start_t", 0.0)) if config.refiner.enabled else 0.0


def start_path(t: jax.Array, eps: jax.Array, z0: jax.Array, cond: jax.Array, start_t: float):
  """refiner.start_t = s > 0, the cheaper cascade (SDEdit-style): sampling starts at t = s
  from s * cond + (1 - s) * eps, the upsampled base output partly noised, and integrates
  s..1 only. Training matches it: t is drawn in [s, 1] and the path's noise end becomes
  e = eps + s / (1 - s) * (cond - z0), so that z_t = t z0 + (1 - t) e is exactly the
  sampling start at t = s and the data at t = 1: a straight path from where sampling starts
  to the clip, with velocity z0 - e. Returns (t, e); s = 0 is the full-step refiner."""
  if start_t <= 0:
    return t, eps
  t = start_t + (1.0 - start_t) * t
  return t, eps + start_t / (1.0 - start_t) * (cond - z0)


def check_config(config, video_ae) -> None:
  """refiner.*: the low-res view of the data clip must be a clip `video_ae()` (the config's
  video autoencoder, shapes only) encodes, and its keyframes single latent frames."""
  r, d = config.refiner, config.data
  if not r.enabled:
    return
  for f in ("scale", "time_scale"):
    check(isinstance(r[f], int) and r[f] >= 1, f"refiner.{f}", f"must be an int >= 1, got "
          f"{r[f]!r}")
  check(d.height % r.scale == 0 and d.width % r.scale == 0, "refiner.scale",
        f"data {d.height}x{d.width} (the target) does not divide by {r.scale}")
  check(0.0 <= r.noise_low < 1.0, "refiner.noise_low", "must be in [0, 1)")
  check(0.0 <= r.get("start_t", 0.0) < 1.0, "refiner.start_t", "must be in [0, 1)")
  k = r.num_keyframes
  check(isinstance(k, int) and 0 <= k <= d.num_frames, "refiner.num_keyframes",
        f"must be an int in [0, data.num_frames={d.num_frames}], got {k!r}")
  check(not k or config.model.patch_size_t == 1, "model.patch_size_t",
        "refiner keyframes are single latent frames: need 1")
  # The low-res view is cut from each pixel clip: not from latents, nor per bucket.
  check(d.format == "clips", "data.format", "the refiner trains on clips")
  check(not d.resolutions and not d.durations, "data.resolutions",
        "the refiner trains on one geometry (no buckets)")
  vae = video_ae()
  try:
    vae.latent_hw(d.height // r.scale, d.width // r.scale)
  except ValueError as e:
    raise ConfigError("refiner.scale", f"low-res {d.height // r.scale}x{d.width // r.scale}: "
                      f"{e}") from None
  frames = low_res_frames(d.num_frames, r.time_scale)
  try:
    vae.latent_frames(frames)
  except ValueError as e:
    raise ConfigError("refiner.time_scale", f"low-res {frames} frames: {e}") from None
