"""Condition masks on the latent grid for every task, traceable inside jit.

Video masks have shape (T, h, w, 1), audio masks (Ta, 1); 1 = keep, 0 = generate.

| task       | video mask                                   |
|------------|----------------------------------------------|
| t2av       | 0 everywhere                                  |
| i2v        | 1 at latent frame 0                           |
| extend     | 1 for t < k, k random in [1, T-1]             |
| start_end  | 1 at t = 0 and t = T-1                        |
| inpaint    | 0 inside a random box over a random time span |

Audio follows video by default (regenerated in full, conditioned on the video); the audio
tasks `a_extend` / `a_inpaint` keep a prefix / all but a random span of the audio.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

VIDEO_TASKS = ("t2av", "i2v", "extend", "start_end", "inpaint")
AUDIO_TASKS = ("none", "a_extend", "a_inpaint")


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
  k_ext, k_t, k_h, k_w = jax.random.split(rng, 4)
  k = jax.random.randint(k_ext, (), 1, max(t_len, 2))
  t0, t1 = _span(k_t, t_len)
  h0, h1 = _span(k_h, h, min_len=max(1, h // 4))
  w0, w1 = _span(k_w, w, min_len=max(1, w // 4))
  inside = (t >= t0) & (t < t1) & (hh >= h0) & (hh < h1) & (ww >= w0) & (ww < w1)
  masks = jnp.stack([
      jnp.zeros((t_len, h, w), bool),
      jnp.broadcast_to(t == 0, (t_len, h, w)),
      jnp.broadcast_to(t < k, (t_len, h, w)),
      jnp.broadcast_to((t == 0) | (t == t_len - 1), (t_len, h, w)),
      ~inside,
  ])
  return masks[task].astype(jnp.float32)[..., None]


def audio_task_mask(task: str | jax.Array, rng: jax.Array, length: int) -> jax.Array:
  """Mask (Ta, 1) for one example; `task` is a name or an index into AUDIO_TASKS."""
  if isinstance(task, str):
    task = AUDIO_TASKS.index(task)
  i = jnp.arange(length)
  k1, k2 = jax.random.split(rng)
  k = jax.random.randint(k1, (), 1, max(length, 2))
  s0, s1 = _span(k2, length, min_len=max(1, length // 8))
  masks = jnp.stack([jnp.zeros((length,), bool), i < k, ~((i >= s0) & (i < s1))])
  return masks[task].astype(jnp.float32)[:, None]


def _weights(mixture: Mapping[str, float], names: Sequence[str]) -> jax.Array:
  w = jnp.array([float(mixture.get(n, 0.0)) for n in names])
  return jnp.log(w / w.sum())


def sample_task_masks(rng: jax.Array, batch: int, *, video_grid: Sequence[int],
                      audio_length: int | None, video_mixture: Mapping[str, float],
                      audio_mixture: Mapping[str, float] | None = None):
  """Draws a task per example from the mixtures; returns video masks (B, T, h, w, 1), audio
  masks (B, Ta, 1) or None, and the task indices."""
  k_task, k_v, k_atask, k_a = jax.random.split(rng, 4)
  tasks = jax.random.categorical(k_task, _weights(video_mixture, VIDEO_TASKS), shape=(batch,))
  v = jax.vmap(lambda t, r: video_task_mask(t, r, video_grid))(
      tasks, jax.random.split(k_v, batch))
  a = None
  if audio_length is not None:
    mix = audio_mixture or {"none": 1.0}
    a_tasks = jax.random.categorical(k_atask, _weights(mix, AUDIO_TASKS), shape=(batch,))
    a = jax.vmap(lambda t, r: audio_task_mask(t, r, audio_length))(
        a_tasks, jax.random.split(k_a, batch))
  return v, a, tasks


def condition_latent(z0: jax.Array, keep: jax.Array, empty: jax.Array) -> jax.Array:
  """I: the clean latent where kept, the latent of a black frame / silence elsewhere."""
  return jnp.where(keep > 0.5, z0, jnp.broadcast_to(empty, z0.shape).astype(z0.dtype))


def channel_concat(noisy: jax.Array, cond: jax.Array, keep: jax.Array) -> jax.Array:
  """Concat(V, I, M) on the channel axis: 2C + 1 channels."""
  return jnp.concatenate([noisy, cond.astype(noisy.dtype), keep.astype(noisy.dtype)], axis=-1)
