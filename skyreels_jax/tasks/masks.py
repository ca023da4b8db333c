"""Condition masks on the latent grid for every task, traceable inside jit.

Video masks have shape (T, h, w, 1), audio masks (Ta, 1); 1 = keep, 0 = generate.

| task             | video mask                                               |
|------------------|----------------------------------------------------------|
| t2av             | 0 everywhere (text to audio+video; T2I on 1-frame images) |
| i2v              | 1 at latent frame 0                                       |
| extend           | 1 for t < k, k random in [1, T-1]                         |
| start_end        | 1 at t = 0 and t = T-1                                    |
| inpaint          | 0 inside a random box over a random time span             |
| inpaint_stroke   | 0 under random free-form brush strokes over a time span   |
| inpaint_temporal | 0 over a random time span (whole frames)                  |
| t2v              | 0 everywhere; the audio stream is dropped (examples.py)   |
| t2a              | 0 everywhere; the video stream is dropped (examples.py)   |
| inpaint_given    | the record's mask (given.py)                              |
| edit_pair        | the record's mask; I from its source_video (given.py)     |
| ref_inpaint      | the record's mask; its references prepended (given.py)    |

Audio follows video by default (regenerated in full, conditioned on the video); the audio
tasks `a_extend` / `a_inpaint` keep a prefix / all but a random span of the audio, and
`a_inpaint_given` the record's audio_mask.
On 1-frame (image) batches only the tasks in IMAGE_TASKS are drawn. The data-given tasks
are drawn only when one of them has weight, so mixtures without them draw what they drew
before those tasks existed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from skyreels_jax.tasks.given import AUDIO_GIVEN_TASKS, GIVEN_TASKS

# Tasks that draw their own masks; the data-given ones follow (their masks come from the
# batch: given.py).
RANDOM_TASKS = ("t2av", "i2v", "extend", "start_end", "inpaint", "inpaint_stroke",
                "inpaint_temporal")
VIDEO_TASKS = RANDOM_TASKS + ("t2v", "t2a") + GIVEN_TASKS
IMAGE_TASKS = ("t2av", "inpaint", "inpaint_stroke", "t2v") + GIVEN_TASKS
NUM_STROKES = 3
AUDIO_RANDOM_TASKS = ("none", "a_extend", "a_inpaint")
AUDIO_TASKS = AUDIO_RANDOM_TASKS + AUDIO_GIVEN_TASKS


def _span(rng, n: int, min_len: int = 1):
  """Random [start, end) with 1 <= end - start <= n."""
  k1, k2 = jax.random.split(rng)
  length = jax.random.randint(k1, (), min_len, n + 1)
  start = jax.random.randint(k2, (), 0, n - length + 1)
  return start, start + length


def video_task_mask(task: str | jax.Array, rng: jax.Array, grid: Sequence[int]) -> jax.Array:
  """Mask (T, h, w, 1) for one example; `task` is a name or an index into VIDEO_TASKS."""
  t_len, h, w = grid
  if isinstance(task, str):
    task = VIDEO_TASKS.index(task)
  t = jnp.arange(t_len)[:, None, None]
  hh = jnp.arange(h)[None, :, None]
  ww = jnp.arange(w)[None, None, :]
  k_ext, k_t, k_h, k_w, k_s = jax.random.split(rng, 5)
  k = jax.random.randint(k_ext, (), 1, max(t_len, 2))
  t0, t1 = _span(k_t, t_len)
  h0, h1 = _span(k_h, h, min_len=max(1, h // 4))
  w0, w1 = _span(k_w, w, min_len=max(1, w // 4))
  span = (t >= t0) & (t < t1)
  inside = span & (hh >= h0) & (hh < h1) & (ww >= w0) & (ww < w1)
  full = (t_len, h, w)
  generate_all = jnp.zeros(full, bool)
  masks = jnp.stack([
      generate_all,
      jnp.broadcast_to(t == 0, full),
      jnp.broadcast_to(t < k, full),
      jnp.broadcast_to((t == 0) | (t == t_len - 1), full),
      ~inside,
      ~(span & _strokes(k_s, h, w)[None]),
      ~jnp.broadcast_to(span, full),
      generate_all,
      generate_all,
  ] + [generate_all] * len(GIVEN_TASKS))    # placeholders: given.py substitutes the batch's
  return masks[task].astype(jnp.float32)[..., None]


def _strokes(rng, h: int, w: int) -> jax.Array:
  """(h, w) booleans under NUM_STROKES brush strokes: segments between random points, with
  a random radius between 1/8 and 1/4 of the shorter side (at least one cell)."""
  k_p, k_r = jax.random.split(rng)
  pts = jax.random.uniform(k_p, (NUM_STROKES, 2, 2)) * jnp.array([h - 1, w - 1])
  side = min(h, w)
  radius = jax.random.uniform(k_r, (NUM_STROKES,), minval=max(side / 8, 0.5),
                              maxval=max(side / 4, 0.75))
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1)  # (h, w, 2)
  a, b = pts[:, 0][:, None, None], pts[:, 1][:, None, None]                      # (S,1,1,2)
  ab = b - a
  u = jnp.clip(((grid - a) * ab).sum(-1) / jnp.maximum((ab * ab).sum(-1), 1e-6), 0.0, 1.0)
  dist = jnp.linalg.norm(grid - (a + u[..., None] * ab), axis=-1)               # (S, h, w)
  return (dist <= radius[:, None, None]).any(0)


def audio_task_mask(task: str | jax.Array, rng: jax.Array, length: int) -> jax.Array:
  """Mask (Ta, 1) for one example; `task` is a name or an index into AUDIO_TASKS."""
  if isinstance(task, str):
    task = AUDIO_TASKS.index(task)
  i = jnp.arange(length)
  k1, k2 = jax.random.split(rng)
  k = jax.random.randint(k1, (), 1, max(length, 2))
  s0, s1 = _span(k2, length, min_len=max(1, length // 8))
  masks = jnp.stack([jnp.zeros((length,), bool), i < k, ~((i >= s0) & (i < s1))]
                    + [jnp.zeros((length,), bool)] * len(AUDIO_GIVEN_TASKS))
  return masks[task].astype(jnp.float32)[:, None]


def _weights(mixture: Mapping[str, float], names: Sequence[str],
             given: Sequence[str]) -> jax.Array:
  """Log weights over `names`; without weight on the `given` tasks (the last ones) they are
  left out of the draw, which then draws exactly what it did before they existed."""
  if not any(float(mixture.get(n, 0.0)) > 0 for n in given):
    names = names[:len(names) - len(given)]
  w = jnp.array([float(mixture.get(n, 0.0)) for n in names])
  return jnp.log(w / w.sum())


def sample_task_masks(rng: jax.Array, batch: int, *, video_grid: Sequence[int],
                      audio_length: int | None, video_mixture: Mapping[str, float],
                      audio_mixture: Mapping[str, float] | None = None,
                      return_audio_tasks: bool = False):
  """Draws a task per example from the mixtures; returns video masks (B, T, h, w, 1), audio
  masks (B, Ta, 1) or None, and the task indices (and the audio task indices, or None)."""
  k_task, k_v, k_atask, k_a = jax.random.split(rng, 4)
  if video_grid[0] == 1:   # images: no temporal tasks
    image_mix = {n: w for n, w in video_mixture.items() if n in IMAGE_TASKS}
    video_mixture = image_mix if sum(image_mix.values()) > 0 else {"t2av": 1.0}
  tasks = jax.random.categorical(k_task, _weights(video_mixture, VIDEO_TASKS, GIVEN_TASKS),
                                 shape=(batch,))
  v = jax.vmap(lambda t, r: video_task_mask(t, r, video_grid))(
      tasks, jax.random.split(k_v, batch))
  a = None
  if audio_length is not None:
    mix = audio_mixture or {"none": 1.0}
    a_tasks = jax.random.categorical(k_atask, _weights(mix, AUDIO_TASKS, AUDIO_GIVEN_TASKS),
                                     shape=(batch,))
    a = jax.vmap(lambda t, r: audio_task_mask(t, r, audio_length))(
        a_tasks, jax.random.split(k_a, batch))
  if return_audio_tasks:
    return v, a, tasks, a_tasks if audio_length is not None else None
  return v, a, tasks


def condition_latent(z0: jax.Array, keep: jax.Array, empty: jax.Array) -> jax.Array:
  """I: the clean latent where kept, the latent of a black frame / silence elsewhere."""
  return jnp.where(keep > 0.5, z0, jnp.broadcast_to(empty, z0.shape).astype(z0.dtype))


def channel_concat(noisy: jax.Array, cond: jax.Array, keep: jax.Array) -> jax.Array:
  """Concat(V, I, M) on the channel axis: 2C + 1 channels."""
  return jnp.concatenate([noisy, cond.astype(noisy.dtype), keep.astype(noisy.dtype)], axis=-1)


def given(z: jax.Array) -> jax.Array:
  """Concat(z, z, 1): latents given whole and clean (references, refiner keyframes, the
  refiner's audio), never noised, no loss."""
  return channel_concat(z, z, jnp.ones(z.shape[:-1] + (1,), z.dtype))
