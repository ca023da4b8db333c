"""Conditions that come with the data (records' `mask`, `audio_mask`, `source_video`,
`references`, `instruction`; data/records.py) and the one rule that brings a pixel or
sample mask to the latent grid, shared by training, encode_latents and the sampler's
--mask / --audio_mask.

The rule: a latent position is kept only where ALL the pixels (samples) it encodes are
kept; any pixel to regenerate makes its whole latent cell generated, so nothing marked for
regeneration is ever pinned. A latent frame encodes `temporal_factor` pixel frames; with a
causal VAE (F = 1 + factor * (T - 1), Wan) latent frame 0 encodes frame 0 alone. A static
mask (one frame) holds on every latent frame. Audio latent j encodes samples
[j * hop, (j + 1) * hop) of the clip, hop = ceil(S / Ta) (the encoders pad the tail).

Tasks (masks.py draws them; examples.py builds their inputs):
| task            | needs                  | video keep     | condition I            |
|-----------------|------------------------|----------------|------------------------|
| inpaint_given   | mask                   | the mask       | the clip where kept    |
| edit_pair       | mask, source_video     | the mask       | the SOURCE where kept; |
|                 |                        |                | prompt: the instruction|
| ref_inpaint     | mask, references       | the mask       | the clip where kept,   |
|                 |                        |                | references prepended   |
| a_inpaint_given | audio_mask (audio)     | (video task's) | the sound where kept   |
An example drawn for a task whose fields its record lacks trains as the configured
fallback (data.given_fallback / data.audio_given_fallback, random masks) and is counted
(the `task_fallbacks` metric).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from skyreels_jax.data.given import TASK_FIELDS

GIVEN_TASKS = ("inpaint_given", "edit_pair", "ref_inpaint")
AUDIO_GIVEN_TASKS = ("a_inpaint_given",)
# The loader flags (has_*) of the record fields each task needs (data/given.TASK_FIELDS).
NEEDS = {task: tuple(f"has_{f}" for f in fields) for task, fields in TASK_FIELDS.items()}
EDIT_PROMPTS = ("instruction", "append")


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def video_keep(mask, grid, temporal_factor: int):
  """Pixel keep mask (..., F, H, W) (1 / True = keep) -> latent keep (..., T, h, w, 1)
  float32 on `grid` = (T, h, w) by the rule above. numpy in, numpy out; traceable on jax
  arrays. F is 1 (static), T * factor, or 1 + factor * (T - 1) (causal)."""
  xp = _xp(mask)
  t_len, h, w = grid
  f, hh, ww = mask.shape[-3:]
  if hh % h or ww % w:
    raise ValueError(f"a {hh}x{ww} mask does not tile the {h}x{w} latent grid")
  keep = mask > 0.5 if mask.dtype != bool else mask
  lead = keep.shape[:-3]
  if f == 1:
    factor = 1
  elif f == t_len * temporal_factor:
    factor = temporal_factor
  elif t_len > 1 and f == 1 + temporal_factor * (t_len - 1):
    # Causal: frame 0 alone is latent frame 0; repeating it fills a block without changing
    # what "all kept" means.
    first = xp.repeat(keep[..., :1, :, :], temporal_factor - 1, axis=-3)
    keep = xp.concatenate([first, keep], axis=-3)
    factor = temporal_factor
  else:
    raise ValueError(f"a {f}-frame mask does not match {t_len} latent frames (temporal "
                     f"factor {temporal_factor})")
  frames = keep.shape[-3] // factor
  cells = keep.reshape(lead + (frames, factor, h, hh // h, w, ww // w)).all(
      axis=(-5, -3, -1))
  cells = xp.broadcast_to(cells, lead + (t_len, h, w))
  return cells.astype(xp.float32)[..., None]


def audio_keep(mask, length: int):
  """Sample keep mask (..., S) -> latent keep (..., length, 1) float32 by the rule above."""
  xp = _xp(mask)
  samples = mask.shape[-1]
  hop = -(-samples // length)
  keep = mask > 0.5 if mask.dtype != bool else mask
  pad = hop * length - samples
  if pad < 0:
    raise ValueError(f"{samples} samples do not fit {length} latents")
  if pad:   # the padded tail is not part of the clip: it does not veto keeping
    keep = xp.concatenate([keep, xp.ones(keep.shape[:-1] + (pad,), bool)], axis=-1)
  return keep.reshape(keep.shape[:-1] + (length, hop)).all(-1).astype(xp.float32)[..., None]


def parse_span(text: str) -> tuple[float, float]:
  """"START:END" seconds (0 <= START < END) -> (start, end); ValueError otherwise (the
  sampler's --audio_mask, the manifests' audio_mask column)."""
  start, sep, end = text.partition(":")
  try:
    span = (float(start), float(end))
  except ValueError:
    span = None
  if not sep or span is None or not 0 <= span[0] < span[1]:
    raise ValueError(f"{text!r}: expected START:END in seconds with 0 <= START < END")
  return span


def span_keep(num_samples: int, sample_rate: int, start: float, end: float) -> np.ndarray:
  """Sample keep mask (S,) uint8 regenerating [start, end) seconds (--audio_mask)."""
  t = np.arange(num_samples) / sample_rate
  return (~((t >= start) & (t < end))).astype(np.uint8)


def enabled(mixture, names=GIVEN_TASKS) -> tuple[str, ...]:
  """The given tasks with a positive weight in a task mixture."""
  return tuple(n for n in names if float(mixture.get(n, 0.0)) > 0)


def substitute(tasks, keep, *, names, task_names, given_keep, has: dict, fallback: str,
               fallback_keep):
  """Examples drawn for one of the given tasks `names`: the record's mask (`given_keep`,
  shaped like `keep`) where the record has every field the task needs (`has`: flag ->
  (B,) bool), else the `fallback` task with its random mask (`fallback_keep`). Returns
  (tasks, keep, used (B,) bool: trained on the record's mask, fell_back (B,) bool)."""
  b = tasks.shape[0]
  used = jnp.zeros((b,), bool)
  fell_back = jnp.zeros((b,), bool)
  for name in names:
    drawn = tasks == task_names.index(name)
    ok = jnp.ones((b,), bool)
    for flag in NEEDS[name]:
      ok &= jnp.asarray(has.get(flag, jnp.zeros((b,), bool)), bool)
    used |= drawn & ok
    fell_back |= drawn & ~ok
  tasks = jnp.where(fell_back, task_names.index(fallback), tasks)
  shape = (b,) + (1,) * (keep.ndim - 1)
  if given_keep is not None:
    keep = jnp.where(used.reshape(shape), given_keep.astype(keep.dtype), keep)
  keep = jnp.where(fell_back.reshape(shape), fallback_keep.astype(keep.dtype), keep)
  return tasks, keep, used, fell_back
