"""Flow matching, the one place that fixes the convention (SPEC section 4).

    z_t = t * z0 + (1 - t) * eps,    t in [0, 1],  t = 1 is data, t = 0 is noise
    target velocity v = dz_t/dt = z0 - eps

The network's timestep input is the noise level in diffusers/HunyuanVideo units,
`model_timestep(t) = 1000 * (1 - t)`, so a pretrained HunyuanVideo branch sees what it saw
in pretraining. Timesteps are drawn as a noise level sigma (uniform or logit-normal), then
shifted (SD3/Wan): sigma' = shift * sigma / (1 + (shift - 1) * sigma); shift > 1 means noisier.

What the network outputs, per stream (`flow.video_prediction`, `flow.audio_prediction`): the
velocity itself, or the clean data z0
("data", x-prediction: Li & He 2025, "Back to Basics: Let Denoising Generative Models
Denoise"), turned into the velocity it implies by `velocity_from` before the loss, the
guidance and the solver, so everything downstream sees a velocity either way. x-prediction is
for pixel-space latents whose tokens are as wide as the model: the clean clip lies on a low-
dimensional manifold a narrow head can reach, the noise in a velocity does not. Not for
sound whose phase the prompt leaves open (the tiny tones): the data estimate of a random-phase
tone averages to silence, and so does the sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from skyreels_jax.core import check

SAMPLERS = ("uniform", "logit_normal")
SHIFT_MODES = ("fixed", "auto")
PREDICTIONS = ("velocity", "data")
# x-prediction's velocity divides by 1 - t; below this gap the divisor is held (the loss
# weight 1 / (1 - t)^2 stops at 400 and a solver step at t = 1 stays finite), as in Li & He.
DATA_MIN_GAP = 0.05


def model_timestep(t: jax.Array) -> jax.Array:
  return 1000.0 * (1.0 - t)


def model_guidance(scale: jax.Array) -> jax.Array:
  """An embedded guidance scale (model.guidance_embed) in the embedder's units: HunyuanVideo's
  pipeline passes guidance x 1000, like the timesteps."""
  return 1000.0 * jnp.asarray(scale, jnp.float32)


def shift_sigma(sigma: jax.Array, shift: float) -> jax.Array:
  return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def resolution_shift(shift: float, tokens: int, *, mode: str, base_tokens: int) -> float:
  """The timestep shift for a clip of `tokens` video tokens (latent frames x rows x columns
  after patching). fixed: `shift`, for every size. auto: SD3's resolution rule (Esser et al.
  2024, section 5.3.2), shift * sqrt(tokens / base_tokens): `shift` holds at `base_tokens`,
  4x the tokens doubles it, so a 1080p clip is noised more than a 256px one at the same t."""
  if mode == "fixed":
    return float(shift)
  if mode == "auto":
    return float(shift) * (tokens / base_tokens) ** 0.5
  raise ValueError(f"shift_mode={mode!r}: choose one of {SHIFT_MODES}")


def video_tokens(grid, patch_size_t: int, patch_size: int) -> int:
  """Video tokens of a latent grid (T, h, w) with the model's patch sizes."""
  t, h, w = grid
  return (t // patch_size_t) * (h // patch_size) * (w // patch_size)


def sample_t(rng: jax.Array, batch: int, *, sampling: str, shift: float = 1.0,
             logit_mean: float = 0.0, logit_std: float = 1.0,
             uniform_share: float = 0.0) -> jax.Array:
  """Training times t (B,) in (0, 1). uniform_share: each time is drawn uniformly instead
  with this probability (before the shift), so a logit-normal that rarely reaches the clean
  end still trains it."""
  uniform = lambda k: jax.random.uniform(k, (batch,), minval=1e-5, maxval=1.0 - 1e-5)
  if sampling == "uniform":
    sigma = uniform(rng)
  elif sampling == "logit_normal":
    sigma = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,)))
  else:
    raise ValueError(f"flow.timestep_sampling={sampling!r}: choose one of {SAMPLERS}")
  if uniform_share:
    k_pick, k_uniform = jax.random.split(jax.random.fold_in(rng, 1))
    sigma = jnp.where(jax.random.uniform(k_pick, (batch,)) < uniform_share,
                      uniform(k_uniform), sigma)
  return 1.0 - shift_sigma(sigma, shift)


def sampling_times(num_steps: int, shift: float = 1.0) -> jax.Array:
  """t_0 = 0 (noise) < ... < t_N = 1 (data), with the same shift as training."""
  sigma = jnp.linspace(1.0, 0.0, num_steps + 1)
  return 1.0 - shift_sigma(sigma, shift)


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)).astype(x.dtype)


def noisy(z0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  tb = _bcast(t, z0)
  return tb * z0 + (1.0 - tb) * eps


def velocity_target(z0: jax.Array, eps: jax.Array) -> jax.Array:
  return z0 - eps


def predict_data(z_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
  """x0 estimate from a velocity: z0 = z_t + (1 - t) * v."""
  return z_t + (1.0 - _bcast(t, z_t)) * v


def velocity_from(pred: jax.Array, z_t: jax.Array, t: jax.Array, prediction: str) -> jax.Array:
  """The velocity a network output stands for at state z_t, time t (B,) or scalar.
  data: v = (z0_hat - z_t) / (1 - t), since z_t = t z0 + (1 - t) eps gives
  z0 - eps = (z0 - z_t) / (1 - t); 1 - t held at DATA_MIN_GAP or more."""
  if prediction == "velocity":
    return pred
  if prediction != "data":
    raise ValueError(f"prediction={prediction!r}: choose one of {PREDICTIONS}")
  gap = jnp.maximum(1.0 - _bcast(jnp.asarray(t, jnp.float32), z_t), DATA_MIN_GAP)
  return ((pred.astype(jnp.float32) - z_t.astype(jnp.float32)) / gap).astype(pred.dtype)


def masked_mse(pred: jax.Array, target: jax.Array, keep: jax.Array) -> jax.Array:
  """Mean squared error over the positions to generate (keep == 0) of each example, summed
  over the examples and divided by the batch size; `keep` broadcasts against pred (1 = no
  loss). Every example weighs 1 / batch whatever else is in its batch: an example with
  nothing to generate (a dropped stream, everything kept) adds 0, and does not raise the
  weight of the others (a lone audio example among T2V ones weighs what it weighs in an
  all-audio batch)."""
  return per_example_mse(pred, target, keep).sum() / pred.shape[0]


def per_example_mse(pred: jax.Array, target: jax.Array, keep: jax.Array) -> jax.Array:
  """(B,) mean squared error over each example's positions to generate (0 where none)."""
  w = jnp.broadcast_to(1.0 - keep.astype(jnp.float32), pred.shape)
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)) * w
  axes = tuple(range(1, pred.ndim))
  return err.sum(axes) / jnp.maximum(w.sum(axes), 1.0)


def flow_matching_loss(*, video_pred, video_z0, video_eps, video_keep, audio_pred=None,
                       audio_z0=None, audio_eps=None, audio_keep=None,
                       video_weight: float = 1.0, audio_weight: float = 1.0,
                       keyframe_pred=None, keyframe_z0=None, keyframe_eps=None,
                       keyframe_keep=None, keyframe_weight: float = 1.0,
                       return_per_example: bool = False, t=None,
                       video_prediction: str = "velocity", audio_prediction: str = "velocity"):
  """Weighted sum of the masked velocity losses of both streams (and the cascade base's
  high-res keyframes, when given). References never reach here: the model returns
  predictions for the noisy tokens only. return_per_example: parts also holds
  "per_example" (B,), each example's weighted loss (the loss is their mean).
  A stream predicting "data" (the keyframes follow the video) has its z0 estimates turned
  into their velocities at each example's time `t` (B,) (velocity_from): the loss is still
  the velocity's."""
  b = video_pred.shape[0]
  as_v = lambda pred, z0, eps, kind: velocity_from(pred, noisy(z0, eps, t), t, kind)
  if video_prediction != "velocity":
    video_pred = as_v(video_pred, video_z0, video_eps, video_prediction)
    if keyframe_pred is not None:
      keyframe_pred = as_v(keyframe_pred, keyframe_z0, keyframe_eps, video_prediction)
  if audio_pred is not None and audio_prediction != "velocity":
    audio_pred = as_v(audio_pred, audio_z0, audio_eps, audio_prediction)
  per_v = per_example_mse(video_pred, velocity_target(video_z0, video_eps), video_keep)
  per_a = jnp.zeros((b,), jnp.float32)
  if audio_pred is not None:
    per_a = per_example_mse(audio_pred, velocity_target(audio_z0, audio_eps), audio_keep)
  per_example = video_weight * per_v + audio_weight * per_a
  parts = {"loss_video": per_v.sum() / b, "loss_audio": per_a.sum() / b}
  if keyframe_pred is not None:
    per_k = per_example_mse(keyframe_pred, velocity_target(keyframe_z0, keyframe_eps),
                            keyframe_keep)
    parts["loss_keyframes"] = per_k.sum() / b
    per_example = per_example + keyframe_weight * per_k
  if return_per_example:
    parts["per_example"] = per_example
  return per_example.sum() / b, parts


def check_config(config) -> None:
  """flow.*: raises ConfigError naming the field."""
  f = config.flow
  check(f.timestep_sampling in SAMPLERS, "flow.timestep_sampling",
        f"{f.timestep_sampling!r} is not one of {sorted(SAMPLERS)}")
  check(f.shift > 0, "flow.shift", "must be positive")
  check(0.0 <= f.uniform_share <= 1.0, "flow.uniform_share", "must be in [0, 1]")
  check(f.shift_mode in SHIFT_MODES, "flow.shift_mode",
        f"{f.shift_mode!r} is not one of {sorted(SHIFT_MODES)}")
  for stream in ("video", "audio"):
    kind = f[f"{stream}_prediction"]
    check(kind in PREDICTIONS, f"flow.{stream}_prediction",
          f"{kind!r} is not one of {sorted(PREDICTIONS)}")
  check(f.shift_base_tokens >= 1, "flow.shift_base_tokens", "must be >= 1")
  lo_hi = tuple(f.embedded_guidance)
  check(len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], "flow.embedded_guidance",
        f"{lo_hi} must be (min, max) with 0 <= min <= max")
