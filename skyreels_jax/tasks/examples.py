"""From a batch of clips (pixels, waveforms, tokens) to model inputs and loss targets, inside
jit. One function serves every task: the mixture in `config.data.tasks` picks the masks.

References (SPEC section 3) are taken from the clip itself: `data.num_video_refs` latent
frames (each slot used with probability `data.video_ref_rate`) and a window of
`data.num_audio_refs` audio latents (used with probability `data.audio_ref_rate`). They are prepended clean (Concat(ref, ref, 1)), never noised, carry no loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.tasks.masks import (VIDEO_TASKS, channel_concat, condition_latent,
                                      sample_task_masks)


@dataclasses.dataclass(frozen=True)
class Codecs:
  """The autoencoders and the null prompt, fixed for a run."""
  video_ae: Any
  audio_ae: Any
  null_text_ids: jax.Array    # (L,) tokens of the empty prompt
  null_text_mask: jax.Array   # (L,)

  def empty_video_latent(self, num_frames: int, height: int, width: int) -> jax.Array:
    return self.video_ae.encode(-jnp.ones((1, num_frames, height, width, 3), jnp.float32))

  def empty_audio_latent(self, num_samples: int, channels: int) -> jax.Array:
    return self.audio_ae.encode(jnp.zeros((1, num_samples, channels), jnp.float32))

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """(T, h, w, C) of the video latent of a clip (the loader's stand-in for sound-only
    latents)."""
    vae = self.video_ae
    return (vae.latent_frames(num_frames), *vae.latent_hw(height, width), vae.latent_channels)


def drop_captions(rng, text_ids, text_mask, null_ids, null_mask, rate: float):
  drop = jax.random.bernoulli(rng, rate, (text_ids.shape[0],))[:, None]
  return (jnp.where(drop, null_ids[None], text_ids), jnp.where(drop, null_mask[None], text_mask))


def _video_refs(rng, z0, n: int, rate: float):
  b, t = z0.shape[:2]
  k1, k2 = jax.random.split(rng)
  idx = jax.random.randint(k1, (b, n), 0, t)
  refs = jnp.take_along_axis(z0, idx[:, :, None, None, None], axis=1)
  valid = jax.random.bernoulli(k2, rate, (b, n))
  refs = refs * valid[:, :, None, None, None]
  return channel_concat(refs, refs, jnp.ones(refs.shape[:-1] + (1,))), valid


def _audio_refs(rng, z0, n: int, rate: float):
  b, length = z0.shape[:2]
  k1, k2 = jax.random.split(rng)
  start = jax.random.randint(k1, (b,), 0, max(length - n, 0) + 1)
  idx = start[:, None] + jnp.arange(n)[None]
  refs = jnp.take_along_axis(z0, jnp.minimum(idx, length - 1)[:, :, None], axis=1)
  valid = jnp.broadcast_to(jax.random.bernoulli(k2, rate, (b, 1)), (b, n))
  refs = refs * valid[:, :, None]
  return channel_concat(refs, refs, jnp.ones(refs.shape[:-1] + (1,))), valid


def modality_drops(tasks, batch: dict, use_audio: bool):
  """Per-example (drop_video, drop_audio) booleans (B,). A dropped stream is fed as pure
  noise at t = 0 (no information; what a stream looks like at the start of sampling) and
  carries no loss: T2V drops the audio, T2A the video; clips without sound (`has_audio`)
  always drop the audio and sound-only clips (`has_video`) the video. A clip without sound
  drawn for T2A is trained as T2V instead."""
  b = tasks.shape[0]
  has_video = jnp.asarray(batch.get("has_video", jnp.ones((b,), bool)), bool)
  has_audio = jnp.asarray(batch.get("has_audio", jnp.ones((b,), bool)), bool) & use_audio
  drop_video = ((tasks == VIDEO_TASKS.index("t2a")) & has_audio) | ~has_video
  drop_audio = ((tasks == VIDEO_TASKS.index("t2v")) | ~has_audio) & ~drop_video
  return drop_video, drop_audio


def _stream(z0, eps, t, keep, drop, empty):
  """Model input and loss mask of one stream; dropped examples: t = 0, nothing kept, and a
  loss mask of all ones (no loss)."""
  shape = (-1,) + (1,) * (z0.ndim - 1)
  t = jnp.where(drop, 0.0, t)
  keep = jnp.where(drop.reshape(shape), 0.0, keep)
  x = channel_concat(fm.noisy(z0, eps, t), condition_latent(z0, keep, empty), keep)
  return x, fm.model_timestep(t), jnp.maximum(keep, drop.reshape(shape).astype(keep.dtype))


def training_inputs(batch: dict, rng: jax.Array, *, config, codecs: Codecs, use_audio: bool):
  """Returns (model inputs, loss terms). batch: video (B, F, H, W, 3) in [-1, 1],
  audio (B, S, channels) (absent in image batches), text_ids / text_mask (B, L), optional
  has_video / has_audio (B,) booleans (data/loader.py); or, with data.format = "latents",
  video_latent (B, T, h, w, C) and audio_latent (B, Ta, Ca) in place of video and audio."""
  d, f = config.data, config.flow
  k_t, k_ev, k_ea, k_task, k_cap, k_vr, k_ar = jax.random.split(rng, 7)
  latents = "video_latent" in batch     # data.format = "latents": encoded ahead of time
  use_audio = use_audio and ("audio_latent" if latents else "audio") in batch
  if latents:
    z0_v = batch["video_latent"].astype(jnp.float32)
    nf, hh, ww = codecs.video_ae.pixel_shape(z0_v.shape[1:4])
  else:
    z0_v = codecs.video_ae.encode(batch["video"])
    nf, hh, ww = batch["video"].shape[1:4]
  b = z0_v.shape[0]
  t = fm.sample_t(k_t, b, sampling=f.timestep_sampling, shift=f.shift,
                  logit_mean=f.logit_mean, logit_std=f.logit_std)
  eps_v = jax.random.normal(k_ev, z0_v.shape, z0_v.dtype)
  z0_a = eps_a = keep_a = loss_keep_a = None
  if use_audio:
    z0_a = (batch["audio_latent"].astype(jnp.float32) if latents
            else codecs.audio_ae.encode(batch["audio"]))
    eps_a = jax.random.normal(k_ea, z0_a.shape, z0_a.dtype)
  keep_v, keep_a, tasks = sample_task_masks(
      k_task, b, video_grid=z0_v.shape[1:4], audio_length=z0_a.shape[1] if use_audio else None,
      video_mixture=dict(d.tasks), audio_mixture=dict(d.audio_tasks))
  drop_v, drop_a = modality_drops(tasks, batch, use_audio)
  inputs = {}
  inputs["video"], inputs["video_timestep"], loss_keep_v = _stream(
      z0_v, eps_v, t, keep_v, drop_v, codecs.empty_video_latent(nf, hh, ww))
  inputs["text_ids"], inputs["text_mask"] = drop_captions(
      k_cap, batch["text_ids"], batch["text_mask"], codecs.null_text_ids,
      codecs.null_text_mask, d.caption_dropout)
  if d.num_video_refs:
    inputs["video_refs"], inputs["video_ref_valid"] = _video_refs(k_vr, z0_v, d.num_video_refs,
                                                                  d.video_ref_rate)
    inputs["video_ref_valid"] &= ~drop_v[:, None]
  if use_audio:
    samples = codecs.audio_ae.num_samples(z0_a.shape[1]) if latents else batch["audio"].shape[1]
    empty_a = codecs.empty_audio_latent(samples, codecs.audio_ae.channels)
    inputs["audio"], inputs["audio_timestep"], loss_keep_a = _stream(
        z0_a, eps_a, t, keep_a, drop_a, empty_a)
    if d.num_audio_refs:
      inputs["audio_refs"], inputs["audio_ref_valid"] = _audio_refs(
          k_ar, z0_a, d.num_audio_refs, d.audio_ref_rate)
      inputs["audio_ref_valid"] &= ~drop_a[:, None]
  terms = dict(video_z0=z0_v, video_eps=eps_v, video_keep=loss_keep_v, audio_z0=z0_a,
               audio_eps=eps_a, audio_keep=loss_keep_a, tasks=tasks, t=t,
               drop_video=drop_v, drop_audio=drop_a)
  return inputs, terms


def make_codecs(config) -> tuple[Codecs, Any]:
  """The run's autoencoders and null prompt, and the host-side tokenizer."""
  from skyreels_jax.models import autoencoders, text
  spec = text.build(config.text, dtype=jnp.float32, param_dtype=jnp.float32)
  null = spec.tokenizer("")
  codecs = Codecs(autoencoders.build_video(config.video_ae),
                  autoencoders.build_audio(config.audio_ae, config.data.audio_channels),
                  jnp.asarray(null["text_ids"]), jnp.asarray(null["text_mask"]))
  return codecs, spec.tokenizer
