"""Sampling from a training workdir: EMA params restored onto the sampling mesh, an ODE solver
over the flow, classifier-free guidance with one scale per modality, batched along the batch
axis (cond and uncond halves in one forward), decoding with the run's autoencoders.

Tasks go through the same channel-concat interface as training: text-to-audio-video has
keep = 0 everywhere; image-to-video keeps latent frame 0 (SPEC section 3).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from skyreels_jax.config import derive, validate
from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.diffusion.guidance import guide
from skyreels_jax.diffusion.solvers import solve
from skyreels_jax.parallel.mesh import make_mesh, rules, state_shardings
from skyreels_jax.tasks.examples import make_codecs
from skyreels_jax.tasks.masks import channel_concat, condition_latent, video_task_mask
from skyreels_jax.train.checkpoint import Checkpointer, with_shardings
from skyreels_jax.train.state import abstract_state, make_optimizer


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  num_steps: int
  solver: str
  shift: float
  video_guidance: float
  audio_guidance: float
  seed: int


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run directory")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.model.rope_axes_dim = tuple(config.model.rope_axes_dim)
  return config


class Sampler:
  """Generates clips with the EMA params of a run's latest (or given) checkpoint."""

  def __init__(self, workdir: str, *, step: int | None = None, config=None, mesh=None):
    self.config = config if config is not None else load_run_config(workdir)
    validate(self.config)
    self.geometry, self.mcfg = derive(self.config)
    self.mesh = mesh if mesh is not None else make_mesh(self.config.mesh)
    axis_rules = rules(self.config)
    ckpt = Checkpointer(workdir, async_save=False)
    self.step = ckpt.latest_step() if step is None else step
    if self.step is None:
      raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
    self.graphdef, abstract = abstract_state(self.config, make_optimizer(self.config))
    target = with_shardings(abstract["ema"], state_shardings(abstract["ema"], self.mesh,
                                                            axis_rules))
    self.params = ckpt.restore_subtree(self.step, "ema", target)
    ckpt.close()
    self.codecs, self.tokenizer = make_codecs(self.config)
    self._fn = jax.jit(self._generate, static_argnums=(0,))

  def settings(self, **overrides) -> SampleSettings:
    s = self.config.sample
    base = dict(num_steps=s.num_steps, solver=s.solver, shift=s.shift,
                video_guidance=s.video_guidance, audio_guidance=s.audio_guidance, seed=0)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SampleSettings(**base)

  def _generate(self, settings: SampleSettings, params, text_ids, text_mask, cond_video,
                keep_v, rng):
    model = nnx.merge(self.graphdef, params)
    g = self.geometry
    b = text_ids.shape[0]
    null_ids = jnp.broadcast_to(self.codecs.null_text_ids, text_ids.shape)
    null_mask = jnp.broadcast_to(self.codecs.null_text_mask, text_mask.shape)
    text, tmask = model.encode_text(jnp.concatenate([text_ids, null_ids]),
                                    jnp.concatenate([text_mask, null_mask]))
    k_v, k_a = jax.random.split(rng)
    z_v = jax.random.normal(k_v, (b, *g.video_grid, g.video_channels))
    use_audio = self.mcfg.use_audio
    z_a = (jax.random.normal(k_a, (b, g.audio_length, g.audio_channels)) if use_audio else None)
    keep_a = jnp.zeros((b, g.audio_length, 1)) if use_audio else None
    empty_a = (self.codecs.empty_audio_latent(g.num_samples, self.config.data.audio_channels)
               if use_audio else None)
    two = lambda x: jnp.concatenate([x, x])

    def velocity(z, t):
      zv, za = z
      ts = jnp.full((2 * b,), fm.model_timestep(t))
      inputs = {"video": two(channel_concat(zv, cond_video, keep_v)), "video_timestep": ts}
      if use_audio:
        inputs["audio"] = two(channel_concat(za, condition_latent(za, keep_a, empty_a), keep_a))
        inputs["audio_timestep"] = ts
      v, a = model(text=text, text_mask=tmask, **inputs)
      v = guide(v[:b], v[b:], settings.video_guidance)
      a = guide(a[:b], a[b:], settings.audio_guidance) if use_audio else None
      return v, a

    times = fm.sampling_times(settings.num_steps, settings.shift)
    z_v, z_a = solve(settings.solver, velocity, (z_v, z_a), times)
    z_v = jnp.where(keep_v > 0.5, cond_video, z_v)
    video = self.codecs.video_ae.decode(z_v)
    audio = self.codecs.audio_ae.decode(z_a)[:, :g.num_samples] if use_audio else None
    return video, audio

  def condition_for_image(self, image: np.ndarray | None, batch: int):
    """Condition latent and keep mask: none (T2AV) or a first frame (I2V, uint8 HxWx3)."""
    g = self.geometry
    frames = -np.ones((batch, g.num_frames, g.height, g.width, 3), np.float32)
    if image is None:
      keep = jnp.zeros((batch, *g.video_grid, 1))
    else:
      frames[:, 0] = image.astype(np.float32) / 127.5 - 1.0
      keep = jnp.broadcast_to(video_task_mask("i2v", jax.random.key(0), g.video_grid),
                              (batch, *g.video_grid, 1))
    return self.codecs.video_ae.encode(jnp.asarray(frames)), keep

  def generate(self, prompts: list[str], *, image: np.ndarray | None = None,
               settings: SampleSettings | None = None) -> dict[str, Any]:
    """Returns uint8 video (B, F, H, W, 3) and float audio (B, S, C) (or None)."""
    settings = settings or self.settings()
    tokens = self.tokenizer.batch(prompts)
    cond, keep = self.condition_for_image(image, len(prompts))
    with jax.set_mesh(self.mesh):
      video, audio = self._fn(settings, self.params, jnp.asarray(tokens["text_ids"]),
                              jnp.asarray(tokens["text_mask"]), cond, keep,
                              jax.random.key(settings.seed))
    video = np.asarray(jax.device_get(video))
    video = np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
    audio = None if audio is None else np.asarray(jax.device_get(audio), np.float32)
    return {"video": video, "audio": audio}


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Center-crop to the aspect ratio, then resize (Pillow, bicubic) to (height, width)."""
  from PIL import Image
  h, w = image.shape[:2]
  target = width / height
  if w / h > target:
    nw = int(round(h * target))
    image = image[:, (w - nw) // 2:(w - nw) // 2 + nw]
  else:
    nh = int(round(w / target))
    image = image[(h - nh) // 2:(h - nh) // 2 + nh]
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
