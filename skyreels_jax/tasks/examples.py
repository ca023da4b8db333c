"""From a batch of clips (pixels, waveforms, tokens) to model inputs and loss targets, inside
jit. One function serves every task: the mixture in `config.data.tasks` picks the masks.

References (SPEC section 3) come from outside the target window: the loader cuts them from
another clip of the same source video and augments them (data/references.py); here they are
encoded as at sampling (an image reference is a still: tasks/refiner.still_latents) and
prepended clean (Concat(ref, ref, 1)), right-aligned next to the target, never noised, no loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.core import DTYPES, ConfigError
from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.models import encoders, frozen, text
from skyreels_jax.tasks.masks import (AUDIO_TASKS, VIDEO_TASKS, audio_task_mask, channel_concat,
                                      condition_latent, given, sample_task_masks,
                                      video_task_mask)
from skyreels_jax.tasks import given as given_lib
from skyreels_jax.tasks import keyframes as keyframes_lib
from skyreels_jax.tasks.refiner import refiner_video, start_path, start_time, still_latents
from skyreels_jax.tasks import shots as shots_lib
from skyreels_jax.tasks.shots import shot_count


@dataclasses.dataclass(frozen=True)
class Codecs:
  """The autoencoders, the frozen text encoder (None when the text encoder trains with the
  model, or when training reads precomputed embeddings) and the null prompt, fixed for a
  run. Frozen weights are jit arguments, never constants: `frozen_params()` gives them and
  `bind(params)` the codecs that use them inside the traced function (models/frozen.py)."""
  video_ae: Any
  audio_ae: Any
  null_text_ids: jax.Array    # (L,) tokens of the empty prompt
  null_text_mask: jax.Array   # (L,)
  text_encoder: Any = None
  # (embedding (L, D), mask (L,)) of the empty prompt: caption dropout of precomputed
  # embeddings (data.format = "latents" with a frozen text encoder).
  null_text: tuple[Any, Any] | None = None
  # The condition latents of a black clip / silence (what I holds where nothing is kept),
  # by shape: precomputed once per bucket outside the train step and bound with the frozen
  # weights (`bind({..., "empties": ...})`), so no step encodes them again. None: computed
  # where asked (sampling); an EmptyLatentRecorder: computed and their shapes recorded.
  empties: Any = None

  FROZEN = ("video_ae", "audio_ae", "text_encoder")

  def frozen_params(self) -> dict[str, Any]:
    params = {k: frozen.params_of(getattr(self, k)) for k in self.FROZEN}
    return {k: v for k, v in params.items() if v is not None}

  def bind(self, params: dict[str, Any]) -> "Codecs":
    """Codecs using `params` (frozen_params()' structure, plus optionally "empties")."""
    params = dict(params)
    empties = params.pop("empties", None)
    bound = dataclasses.replace(self, **{k: frozen.bind(getattr(self, k), v)
                                         for k, v in params.items()})
    return bound if empties is None else dataclasses.replace(bound, empties=empties)

  def encode_text(self, model, text_ids, text_mask):
    """(embeddings, mask): the frozen encoder, or the model's own trainable one."""
    if self.text_encoder is not None:
      return self.text_encoder(text_ids, text_mask)
    return model.encode_text(text_ids, text_mask)

  def empty_video_latent(self, num_frames: int, height: int, width: int) -> jax.Array:
    return self._empty("video", (num_frames, height, width))

  def empty_audio_latent(self, num_samples: int, channels: int) -> jax.Array:
    return self._empty("audio", (num_samples, channels))

  def _empty(self, kind: str, shape: tuple[int, ...]) -> jax.Array:
    key = empty_key(kind, shape)
    if isinstance(self.empties, dict):
      if key not in self.empties:
        raise KeyError(f"empty {kind} latent of shape {shape} was not precomputed (have "
                       f"{sorted(self.empties)}): list it with needed_empty_latents")
      return self.empties[key]
    if isinstance(self.empties, EmptyLatentRecorder):
      self.empties.shapes[key] = (kind, shape)
    return self.compute_empty(kind, shape)

  def compute_empty(self, kind: str, shape: tuple[int, ...]) -> jax.Array:
    """The latent of a black clip (kind "video", shape (frames, height, width)) or of
    silence ("audio", (samples, channels)), batch 1."""
    if kind == "video":
      return self.video_ae.encode(-jnp.ones((1, *shape, 3), jnp.float32))
    return self.audio_ae.encode(jnp.zeros((1, *shape), jnp.float32))

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """(T, h, w, C) of the video latent of a clip (the loader's stand-in for sound-only
    latents)."""
    vae = self.video_ae
    return (vae.latent_frames(num_frames), *vae.latent_hw(height, width), vae.latent_channels)


def empty_key(kind: str, shape: tuple[int, ...]) -> str:
  return f"{kind}/{'x'.join(str(int(n)) for n in shape)}"


@dataclasses.dataclass
class EmptyLatentRecorder:
  """Set as Codecs.empties while tracing for shapes: collects which empty latents a
  function asks for ({key: (kind, shape)})."""
  shapes: dict[str, tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=dict)


def needed_empty_latents(config, codecs: Codecs, batch: dict, frozen_params,
                         use_audio: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
  """The empty latents `training_inputs` asks for on batches shaped like `batch` (arrays or
  ShapeDtypeStructs): traced for shapes only, nothing runs."""
  recorder = EmptyLatentRecorder()

  def trace(batch, frozen_params):
    c = dataclasses.replace(codecs.bind(frozen_params), empties=recorder)
    return training_inputs(batch, jax.random.key(0), config=config, codecs=c,
                           use_audio=use_audio)

  jax.eval_shape(trace, batch, frozen_params)
  return recorder.shapes


def input_shapes(config, codecs: Codecs, batch: dict, frozen_params, use_audio: bool) -> dict:
  """The model inputs `training_inputs` makes of batches shaped like `batch` (arrays or
  ShapeDtypeStructs), as ShapeDtypeStructs: traced for shapes only (perf/throughput.py)."""

  def trace(batch, frozen_params):
    return training_inputs(batch, jax.random.key(0), config=config,
                           codecs=codecs.bind(frozen_params), use_audio=use_audio)[0]

  return jax.eval_shape(trace, batch, frozen_params)


def compute_empty_latents(codecs: Codecs, frozen_params,
                          shapes: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
  """{key: latent} for the listed shapes (jit it; `frozen_params` as its argument)."""
  bound = codecs.bind(frozen_params)
  return {k: bound.compute_empty(kind, shape) for k, (kind, shape) in shapes.items()}


def drop_captions(rng, text, text_mask, null_text, null_mask, rate: float):
  """Replaces a `rate` share of the prompts (token ids (B, L) or embeddings (B, L, D)) with
  the empty prompt's; returns (text, mask, dropped (B,) bool)."""
  drop = jax.random.bernoulli(rng, rate, (text.shape[0],))
  like = lambda x: drop.reshape((-1,) + (1,) * (x.ndim - 1))
  return (jnp.where(like(text), jnp.asarray(null_text, text.dtype)[None], text),
          jnp.where(like(text_mask), jnp.asarray(null_mask, bool)[None], text_mask), drop)


def prepended_refs(z: jax.Array, valid: jax.Array, multiple: int):
  """(Concat(z, z, 1) with invalid slots zeroed, valid) padded at the FRONT to a multiple of
  `multiple` slots: valid references sit next to the target (RoPE times -n .. -1), in
  training and at sampling alike. z (B, S, ..., C), valid (B, S)."""
  z, valid = _right_align(z, valid, z.shape[1] + -z.shape[1] % multiple)
  return given(z * valid.reshape(valid.shape + (1,) * (z.ndim - 2)).astype(z.dtype)), valid


def _right_align(z: jax.Array, valid: jax.Array, slots: int):
  """z (B, S, ...) and valid (B, S) padded at the front to `slots` (invalid slots)."""
  pad = slots - z.shape[1]
  return (jnp.pad(z, ((0, 0), (pad, 0)) + ((0, 0),) * (z.ndim - 2)),
          jnp.pad(valid, ((0, 0), (pad, 0))))


def video_reference_inputs(batch: dict, video_ae, config, given_refs=None):
  """(video_refs, video_ref_valid) from the loader's reference pixels (data/references.py):
  per example the image stills or the reference clip, whichever it drew, right-aligned in
  one set of slots; None when config.data.refs draws neither. given_refs: (B,) bool, the
  examples trained as ref_inpaint, which take their record's own stills instead."""
  # Latent batches (data.format = "latents") carry the given stills encoded, and no
  # drawn references (data/references.py needs pixel clips).
  latents = "video_latent" in batch
  mix = {} if latents else dict(config.data.refs)
  options = []
  if given_refs is not None:
    z = (batch["given_ref_latents"].astype(jnp.float32) if latents
         else still_latents(video_ae, batch["given_refs"]))
    n = z.shape[1]
    options.append((z, (jnp.arange(n)[None] >= n - batch["given_ref_count"][:, None])
                    & given_refs[:, None]))
  if mix.get("image", 0.0) > 0:
    z = still_latents(video_ae, batch["ref_images"])
    n = z.shape[1]
    options.append((z, jnp.arange(n)[None] >= n - batch["ref_image_count"][:, None]))
  if mix.get("video", 0.0) > 0:
    z = video_ae.encode(batch["ref_video"])
    options.append((z, jnp.broadcast_to(batch["has_ref_video"][:, None], z.shape[:2])))
  if not options:
    return None
  slots = max(z.shape[1] for z, _ in options)
  options = [_right_align(z, v, slots) for z, v in options]
  if given_refs is not None:   # the record's stills win; the drawn kinds fill the rest
    options = options[1:] + options[:1]
  uses = [None] if mix.get("image", 0.0) > 0 else []     # the first option needs no test
  uses += [batch["has_ref_video"]] if mix.get("video", 0.0) > 0 else []
  uses += [given_refs] if given_refs is not None else []
  z, valid = options[0]
  for (z_k, valid_k), use in zip(options[1:], uses[1:]):   # one kind per example
    z = jnp.where(use[:, None, None, None, None], z_k, z)
    valid = jnp.where(use[:, None], valid_k, valid)
  return prepended_refs(z, valid, config.model.patch_size_t)


def reference_slots(config) -> tuple[int, int]:
  """(video reference latent frames, audio reference latents) a training example carries
  (padded slots included): for token counts (perf/memory.py, tools/aot.py)."""
  d = config.data
  shapes = dict(weights=False, published_if_missing=True)
  video_ae = encoders.build_video(config.video_ae, **shapes)
  audio_ae = encoders.build_audio(config.audio_ae, d.audio_channels, **shapes)
  mix = dict(d.refs)
  video = max([d.ref_images if mix.get("image", 0) > 0 else 0]
              + [video_ae.latent_frames(d.ref_video_frames) if mix.get("video", 0) > 0
                 else 0])
  video += -video % config.model.patch_size_t
  audio = 0
  if d.audio_ref_rate > 0:
    audio = audio_ae.latent_length(int(round(d.audio_ref_seconds * d.sample_rate)))
    audio += -audio % config.model.audio_patch_size
  return video, audio


def audio_reference_inputs(batch: dict, audio_ae, config):
  """(audio_refs, audio_ref_valid) from the loader's reference waveforms, or None."""
  if config.data.audio_ref_rate <= 0 or "ref_audio" not in batch:
    return None
  z = audio_ae.encode(batch["ref_audio"])
  valid = jnp.broadcast_to(batch["has_ref_audio"][:, None], z.shape[:2])
  return prepended_refs(z, valid, config.model.audio_patch_size)


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


def _stream(z0, eps, t, keep, drop, empty, cond=None):
  """Model input and loss mask of one stream; dropped examples: t = 0, nothing kept, and a
  loss mask of all ones (no loss). cond: a condition latent I other than the clean latent
  under `keep` (the refiner's upsampled low-res clip, tasks/refiner.py)."""
  shape = (-1,) + (1,) * (z0.ndim - 1)
  t = jnp.where(drop, 0.0, t)
  keep = jnp.where(drop.reshape(shape), 0.0, keep)
  empty = jnp.broadcast_to(empty, z0.shape).astype(z0.dtype)
  cond = (condition_latent(z0, keep, empty) if cond is None
          else jnp.where(drop.reshape(shape), empty, cond))
  x = channel_concat(fm.noisy(z0, eps, t), cond, keep)
  return x, fm.model_timestep(t), jnp.maximum(keep, drop.reshape(shape).astype(keep.dtype))


def _text_inputs(rng, batch: dict, codecs: Codecs, dropout: float, *, config,
                 num_frames: int, num_latent: int, edit=None) -> dict:
  """The model's text inputs after caption dropout: precomputed embeddings (`text_embedding`
  in the batch), a frozen encoder run here, or token ids for the model's own encoder; with
  model.shot_attention each token's and latent frame's shot (tasks/shots.py; none where
  the caption was dropped or an edit's instruction stands in for it: `edit` (B,) bool)."""
  if "text_embedding" in batch:
    if codecs.null_text is None:
      raise ValueError("precomputed text embeddings need Codecs.null_text")
    text, mask, dropped = drop_captions(rng, batch["text_embedding"], batch["text_mask"],
                                        *codecs.null_text, dropout)
    out = {"text": text, "text_mask": mask}
  else:
    ids, mask, dropped = drop_captions(rng, batch["text_ids"], batch["text_mask"],
                                       codecs.null_text_ids, codecs.null_text_mask, dropout)
    if codecs.text_encoder is None:
      out = {"text_ids": ids, "text_mask": mask}
    else:
      text, mask = codecs.text_encoder(ids, mask)
      out = {"text": text, "text_mask": mask}
  own = ~dropped if edit is None else ~dropped & ~edit
  out.update(shots_lib.shot_inputs(config, batch, own, num_frames=num_frames,
                                   num_latent=num_latent,
                                   temporal_factor=codecs.video_ae.temporal_factor))
  return out


def _shift(config, z0_v) -> float:
  """flow.shift for this batch's video size (flow.shift_mode; sampling uses the same rule)."""
  f, m = config.flow, config.model
  tokens = fm.video_tokens(z0_v.shape[1:4], m.patch_size_t, m.patch_size)
  return fm.resolution_shift(f.shift, tokens, mode=f.shift_mode, base_tokens=f.shift_base_tokens)


@dataclasses.dataclass(frozen=True)
class EvalPoint:
  """Validation (train/evaluate.py): every example at time `t` and with `task`'s masks (the
  refiner has no tasks), no caption dropout; the noise still comes from the rng."""
  t: float
  task: str = "t2av"


def _time_and_noise(config, z0_v, k_t, k_eps, at: EvalPoint | None = None):
  """The flow-matching time of each example (flow.*, shifted for this batch's size; or the
  fixed time of an EvalPoint) and the video noise: one rule for every task, the refiner's
  included."""
  f = config.flow
  if at is not None:
    t = jnp.full((z0_v.shape[0],), at.t, jnp.float32)
  else:
    t = fm.sample_t(k_t, z0_v.shape[0], sampling=f.timestep_sampling,
                    shift=_shift(config, z0_v), logit_mean=f.logit_mean, logit_std=f.logit_std,
                    uniform_share=f.uniform_share)
  return t, jax.random.normal(k_eps, z0_v.shape, z0_v.dtype)


def from_wire(batch: dict) -> dict:
  """The loader sends video as uint8 pixels (4x less host -> device traffic than float32);
  they become [-1, 1] floats here, on the device. Float video passes unchanged."""
  video = batch.get("video")
  if video is not None and video.dtype == jnp.uint8:
    batch = dict(batch, video=video.astype(jnp.float32) / 127.5 - 1.0)
  return batch


def training_inputs(batch: dict, rng: jax.Array, *, config, codecs: Codecs, use_audio: bool,
                    at: EvalPoint | None = None):
  """Returns (model inputs, loss terms); `at`: a validation point (fixed time and task).
  batch: video (B, F, H, W, 3) uint8 pixels or floats in [-1, 1],
  audio (B, S, channels) (absent in image batches), text_ids / text_mask (B, L), optional
  has_video / has_audio (B,) booleans (data/loader.py); or, with data.format = "latents",
  video_latent (B, T, h, w, C) and audio_latent (B, Ta, Ca) in place of video and audio."""
  batch = from_wire(batch)
  if config.refiner.enabled:
    return _refiner_inputs(batch, rng, config=config, codecs=codecs, use_audio=use_audio,
                           at=at)
  d = config.data
  k_t, k_ev, k_ea, k_task, k_cap, k_ek = jax.random.split(rng, 6)
  latents = "video_latent" in batch     # data.format = "latents": encoded ahead of time
  use_audio = use_audio and ("audio_latent" if latents else "audio") in batch
  high_res = None
  if keyframes_lib.enabled(config):   # cascade base: the clip is the high-res one
    high_res = batch["video"]
    batch = dict(batch, video=keyframes_lib.low_res(high_res, config.keyframes))
    # References and an edit's source share the video stream's grid.
    for k in ("ref_images", "ref_video", "source_video", "given_refs"):
      if k in batch:
        batch[k] = keyframes_lib.low_res(batch[k], config.keyframes)
  if latents:
    z0_v = batch["video_latent"].astype(jnp.float32)
    nf, hh, ww = codecs.video_ae.pixel_shape(z0_v.shape[1:4])
  else:
    z0_v = codecs.video_ae.encode(batch["video"])
    nf, hh, ww = batch["video"].shape[1:4]
  b = z0_v.shape[0]
  t, eps_v = _time_and_noise(config, z0_v, k_t, k_ev, at)
  z0_a = eps_a = keep_a = loss_keep_a = None
  if use_audio:
    z0_a = (batch["audio_latent"].astype(jnp.float32) if latents
            else codecs.audio_ae.encode(batch["audio"]))
    eps_a = jax.random.normal(k_ea, z0_a.shape, z0_a.dtype)
  keep_v, keep_a, tasks, a_tasks = sample_task_masks(
      k_task, b, video_grid=z0_v.shape[1:4], audio_length=z0_a.shape[1] if use_audio else None,
      video_mixture={at.task: 1.0} if at else dict(d.tasks), audio_mixture=dict(d.audio_tasks),
      return_audio_tasks=True)
  # A key of its own: mixtures without data-given tasks draw what they drew before.
  tasks, keep_v, keep_a, edit, given_refs, fallbacks = _given_tasks(
      config, batch, jax.random.fold_in(rng, GIVEN_KEY), tasks, keep_v, a_tasks, keep_a,
      video_ae=codecs.video_ae, latents=latents)
  drop_v, drop_a = modality_drops(tasks, batch, use_audio)
  inputs = {}
  empty_v = codecs.empty_video_latent(nf, hh, ww)
  cond_v = None
  if edit is not None:     # edit pairs: I holds the source clip where kept
    z_src = (batch["source_latent"].astype(jnp.float32) if latents
             else codecs.video_ae.encode(batch["source_video"]))
    cond_v = jnp.where(edit.reshape(-1, 1, 1, 1, 1), condition_latent(z_src, keep_v, empty_v),
                       condition_latent(z0_v, keep_v, empty_v))
    batch = dict(batch)
    for k in ("text_ids", "text_embedding", "text_mask"):   # the edit's prompt
      if k in batch:
        batch[k] = jnp.where(edit.reshape((-1,) + (1,) * (batch[k].ndim - 1)),
                             batch["edit_" + k], batch[k])
  inputs["video"], inputs["video_timestep"], loss_keep_v = _stream(
      z0_v, eps_v, t, keep_v, drop_v, empty_v, cond=cond_v)
  inputs.update(_text_inputs(k_cap, batch, codecs, 0.0 if at else d.caption_dropout,
                             config=config, num_frames=nf, num_latent=z0_v.shape[1],
                             edit=edit))
  video_refs = (None if latents and given_refs is None else
                video_reference_inputs(batch, codecs.video_ae, config, given_refs=given_refs))
  if video_refs is not None:
    inputs["video_refs"], valid = video_refs
    inputs["video_ref_valid"] = valid & ~drop_v[:, None]
  if use_audio:
    samples = codecs.audio_ae.num_samples(z0_a.shape[1]) if latents else batch["audio"].shape[1]
    empty_a = codecs.empty_audio_latent(samples, codecs.audio_ae.channels)
    inputs["audio"], inputs["audio_timestep"], loss_keep_a = _stream(
        z0_a, eps_a, t, keep_a, drop_a, empty_a)
    audio_refs = None if latents else audio_reference_inputs(batch, codecs.audio_ae, config)
    if audio_refs is not None:
      inputs["audio_refs"], valid = audio_refs
      inputs["audio_ref_valid"] = valid & ~drop_a[:, None]
  terms = dict(video_z0=z0_v, video_eps=eps_v, video_keep=loss_keep_v, audio_z0=z0_a,
               audio_eps=eps_a, audio_keep=loss_keep_a, tasks=tasks, t=t,
               drop_video=drop_v, drop_audio=drop_a)
  if fallbacks is not None:
    terms["task_fallbacks"] = fallbacks
  if high_res is not None:
    frames, times = keyframes_lib.keyframe_frames(config.keyframes, high_res.shape[1],
                                                  codecs.video_ae)
    z0_k = keyframes_lib.keyframe_latents(codecs.video_ae, high_res, frames)
    eps_k = jax.random.normal(k_ek, z0_k.shape, z0_k.dtype)
    inputs["keyframes"], terms["keyframe_keep"] = keyframes_lib.keyframe_stream(
        z0_k, eps_k, t, drop_v, codecs.empty_video_latent(1, *high_res.shape[2:4]))
    inputs["keyframe_times"] = times
    terms.update(keyframe_z0=z0_k, keyframe_eps=eps_k)
  return inputs, terms


GIVEN_KEY = 0x617   # fold_in constant of the data-given tasks' draws


def _given_tasks(config, batch: dict, rng, tasks, keep_v, a_tasks, keep_a, *, video_ae,
                 latents: bool):
  """The data-given tasks (tasks/given.py) of this draw: examples drawn for one take their
  record's masks, or fall back to the configured random-mask task when the record lacks a
  field. Returns (tasks, keep_v, keep_a, edit (B,) bool or None, ref_inpaint (B,) bool or
  None, fallbacks: how many examples fell back, or None without data-given tasks)."""
  d = config.data
  names = given_lib.enabled(d.tasks)
  audio_names = (given_lib.enabled(d.audio_tasks, given_lib.AUDIO_GIVEN_TASKS)
                 if keep_a is not None else ())
  if not names and not audio_names:
    return tasks, keep_v, keep_a, None, None, None
  b = tasks.shape[0]
  has = {k: batch[k] for k in ("has_mask", "has_source", "has_refs", "has_audio_mask")
         if k in batch}
  k_v, k_a = jax.random.split(rng)
  fallbacks = jnp.zeros((), jnp.float32)
  edit = refs = None
  if names:
    grid = keep_v.shape[1:4]
    given_keep = (batch["given_keep"].astype(jnp.float32)[..., None] if latents
                  else given_lib.video_keep(batch["given_mask"], grid, video_ae.temporal_factor))
    fallback = VIDEO_TASKS.index(d.given_fallback)
    fallback_keep = jax.vmap(lambda r: video_task_mask(fallback, r, grid))(
        jax.random.split(k_v, b))
    tasks, keep_v, used, fell = given_lib.substitute(
        tasks, keep_v, names=names, task_names=VIDEO_TASKS, given_keep=given_keep, has=has,
        fallback=d.given_fallback, fallback_keep=fallback_keep)
    fallbacks += fell.sum()
    if "edit_pair" in names:
      edit = used & (tasks == VIDEO_TASKS.index("edit_pair"))
    if "ref_inpaint" in names:
      refs = used & (tasks == VIDEO_TASKS.index("ref_inpaint"))
  if audio_names:
    length = keep_a.shape[1]
    given_keep = (batch["given_audio_keep"].astype(jnp.float32)[..., None] if latents
                  else given_lib.audio_keep(batch["given_audio_mask"], length))
    fallback = AUDIO_TASKS.index(d.audio_given_fallback)
    fallback_keep = jax.vmap(lambda r: audio_task_mask(fallback, r, length))(
        jax.random.split(k_a, b))
    _, keep_a, _, fell = given_lib.substitute(
        a_tasks, keep_a, names=audio_names, task_names=AUDIO_TASKS, given_keep=given_keep,
        has=has, fallback=d.audio_given_fallback, fallback_keep=fallback_keep)
    fallbacks += fell.sum()
  return tasks, keep_v, keep_a, edit, refs, fallbacks


def _refiner_inputs(batch: dict, rng: jax.Array, *, config, codecs: Codecs, use_audio: bool,
                    at: EvalPoint | None = None):
  """training_inputs of the cascade refiner (config.refiner.enabled; SPEC section 5 step 2):
  its own task, no task mixture, no references. Video: Concat(z_t, upsampled low-res, 0),
  loss everywhere, plus the high-res keyframe stills as their own clean tokens
  (tasks/refiner.py).
  Audio: the base model's track is given, not regenerated: fed clean (t = 1) as its own
  condition with keep = 1 everywhere, so no audio loss; the joint attention still lets the
  refined frames follow the sound (lip and hit timing at the doubled frame rate)."""
  k_t, k_ev, k_ea, k_low, k_cap = jax.random.split(rng, 5)
  use_audio = use_audio and "audio" in batch
  video = batch["video"]
  pieces = refiner_video(video, k_low, refiner=config.refiner, video_ae=codecs.video_ae)
  z0_v, cond_v, keep_v = pieces["z0"], pieces["cond"], pieces["keep"]
  b = z0_v.shape[0]
  t, eps_v = _time_and_noise(config, z0_v, k_t, k_ev, at)
  # refiner.start_t: the path from the sampler's partly noised start (tasks/refiner.py).
  t, eps_v = start_path(t, eps_v, z0_v, cond_v, start_time(config))
  drop_v = ~jnp.asarray(batch.get("has_video", jnp.ones((b,), bool)), bool)
  inputs = {}
  inputs["video"], inputs["video_timestep"], loss_keep_v = _stream(
      z0_v, eps_v, t, keep_v, drop_v, codecs.empty_video_latent(*video.shape[1:4]), cond=cond_v)
  if "keyframes" in pieces:   # given high-res stills: own tokens, clean, no loss
    inputs["keyframes"] = given(pieces["keyframes"])
    inputs["keyframe_times"] = pieces["keyframe_times"]
  inputs.update(_text_inputs(k_cap, batch, codecs, 0.0 if at else config.data.caption_dropout,
                             config=config, num_frames=video.shape[1],
                             num_latent=z0_v.shape[1]))
  z0_a = eps_a = loss_keep_a = None
  drop_a = jnp.ones((b,), bool)
  if use_audio:
    z0_a = codecs.audio_ae.encode(batch["audio"])
    eps_a = jax.random.normal(k_ea, z0_a.shape, z0_a.dtype)   # what a dropped stream sees
    drop_a = ~jnp.asarray(batch.get("has_audio", jnp.ones((b,), bool)), bool)
    empty_a = codecs.empty_audio_latent(batch["audio"].shape[1], codecs.audio_ae.channels)
    # t = 1: the noisy slot holds the clean latent (a fully given stream looks clean).
    inputs["audio"], inputs["audio_timestep"], loss_keep_a = _stream(
        z0_a, eps_a, jnp.ones((b,)), jnp.ones(z0_a.shape[:-1] + (1,)), drop_a, empty_a)
  # tasks = -1: the refiner is not one of VIDEO_TASKS.
  terms = dict(video_z0=z0_v, video_eps=eps_v, video_keep=loss_keep_v, audio_z0=z0_a,
               audio_eps=eps_a, audio_keep=loss_keep_a, tasks=jnp.full((b,), -1, jnp.int32),
               t=t, drop_video=drop_v, drop_audio=drop_a)
  return inputs, terms


def text_trainable(config) -> bool:
  """Whether the config's text encoder trains with the model (else it is frozen)."""
  return config.text.kind in text.TRAINABLE_KINDS


def make_codecs(config, *, abstract: bool = False,
                text_encoder: bool = True) -> tuple[Codecs, Any]:
  """The run's autoencoders, frozen text encoder and null prompt, and the host-side tokenizer.

  abstract: shapes only (planning tools: no weights read; published architectures for
    absent folders, models/frozen.py); the null prompt is then zeros when no tokenizer
    folder is here (its values never run).
  text_encoder: False leaves a frozen text encoder's weights unread (training on
    precomputed embeddings).
  Missing or wrong checkpoint folders are ConfigErrors naming the `path` field."""
  load = dict(weights=not abstract, published_if_missing=abstract)
  dtype = DTYPES[config.model.dtype]
  components = {}
  for field, build in (("video_ae", lambda: encoders.build_video(config.video_ae, **load)),
                       ("audio_ae", lambda: encoders.build_audio(
                           config.audio_ae, config.data.audio_channels, **load)),
                       ("text", lambda: encoders.build_text(
                           config.text, dtype=dtype, param_dtype=dtype, **load,
                           max_shots=shot_count(config)))):
    try:
      components[field] = build()
    except (ValueError, FileNotFoundError) as e:
      raise ConfigError(f"{field}.path", str(e)) from None
  spec = components["text"]
  if spec.tokenizer is not None:
    null = spec.tokenizer("")
  else:
    length = config.text.max_length
    null = {"text_ids": np.zeros((length,), np.int32), "text_mask": np.zeros((length,), bool)}
  frozen_text = None
  if not spec.trainable and text_encoder:
    frozen_text = text.FrozenTextEncoder(spec.make_encoder(nnx.Rngs(0)))
  codecs = Codecs(components["video_ae"], components["audio_ae"],
                  jnp.asarray(null["text_ids"]), jnp.asarray(null["text_mask"]),
                  text_encoder=frozen_text)
  return codecs, spec.tokenizer
