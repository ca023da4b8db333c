"""The config's entry point: validation, the values derived from a config (computed once,
before tracing), the model of a config, and a run's saved config.

`validate(config)` raises `ConfigError` naming the offending field: each section's checks
live with the code that reads it (`check_config` in models/mmdit.py, parallel/mesh.py,
data/buckets.py, data/references.py, tasks/, tasks/refiner.py, tasks/keyframes.py,
diffusion/; the autoencoders' and text encoder's shapes in models/encoders.py). `derive`
returns the latent geometry and the model config. A field's one default is in
configs/base.py; `load_run_config` reads a run's config.json on top of it. Nothing here
mutates the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from configs import base as base_config

from skyreels_jax.data import buckets as buckets_lib
from skyreels_jax.data import references
from skyreels_jax.data import shots as shots_lib
from skyreels_jax.diffusion import flow_matching, solvers
from skyreels_jax.models import SkyReelsV4, encoders
from skyreels_jax.models import mmdit as mmdit_lib
from skyreels_jax.models.attention import AttentionSpec
from skyreels_jax.models.mmdit import MMDiTConfig
from skyreels_jax.models.rope import audio_time_scale
from skyreels_jax.parallel import mesh as mesh_lib
from skyreels_jax import tasks as tasks_lib
from skyreels_jax.tasks import keyframes as keyframes_lib
from skyreels_jax.tasks import refiner as refiner_lib
from skyreels_jax.tasks.shots import shot_count

# Re-exported: the bottom floor's names, and the mesh arithmetic that lives with the mesh.
from skyreels_jax.core import DTYPES, MESH_AXES, ConfigError, check as _check  # noqa: F401
from skyreels_jax.parallel.mesh import hybrid_mesh_shape, mesh_shape  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Shapes of one training example, in pixels/samples and in latents."""
  num_frames: int
  height: int
  width: int
  num_samples: int
  video_grid: tuple[int, int, int]      # latent (T, h, w)
  video_channels: int
  audio_length: int                      # audio latent frames
  audio_channels: int
  video_tokens: int
  audio_tokens: int
  # Cascade base (keyframes.count > 0): height / width above are the low-res video stream's;
  # the keyframes are these pixel frames of the clip at keyframe_size, at latent frames
  # keyframe_times on a keyframe_grid (h, w) latent grid.
  keyframe_frames: tuple[int, ...] = ()
  keyframe_times: tuple[int, ...] = ()
  keyframe_grid: tuple[int, int] = (0, 0)
  keyframe_size: tuple[int, int] = (0, 0)


def num_audio_samples(data) -> int:
  return buckets_lib.samples_for_frames(data.num_frames, data.fps, data.sample_rate,
                                        data.endpoint_frame)


def validate(config, *, abstract: bool = False) -> None:
  """Raises ConfigError naming the field. Each section is checked by the code that reads it;
  the optimiser and loop sections are read by train/ (above this floor), so they are checked
  here. `abstract`: shapes only, for planning tools: a frozen component whose converted
  folder is absent takes its published architecture (models/frozen.py) instead of failing."""
  mmdit_lib.check_config(config)
  flow_matching.check_config(config)
  solvers.check_config(config)
  buckets_lib.check_clip(config)
  tasks_lib.check_config(config)
  video_ae = lambda: encoders.build_video(config.video_ae, weights=False,
                                          published_if_missing=True)
  references.check_config(config, video_ae)
  _check_train(config)
  mesh_lib.check_config(config)
  derive(config, abstract=abstract)  # shape checks that need the autoencoders
  buckets_lib.check_config(config, lambda probe: derive(probe, abstract=abstract))
  refiner_lib.check_config(config, lambda: encoders.build_video(
      config.video_ae, weights=False, published_if_missing=abstract))
  keyframes_lib.check_config(config)


def _check_train(config) -> None:
  """optim.*, train.*."""
  o, t = config.optim, config.train
  _check(o.lr > 0, "optim.lr", "must be positive")
  _check(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1)")
  _check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
  _check(t.steps >= 1, "train.steps", "must be >= 1")
  _check(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
  _check(t.log_every >= 1, "train.log_every", "must be >= 1")
  _check(t.checkpoint_every_secs >= 0, "train.checkpoint_every_secs", "must be >= 0 (0: off)")
  _check(t.max_skipped_steps >= 1, "train.max_skipped_steps", "must be >= 1")
  _check(t.loss_spike_factor == 0 or t.loss_spike_factor > 1, "train.loss_spike_factor",
         "must be 0 (off) or > 1")
  _check(t.loss_spike_window >= 1, "train.loss_spike_window", "must be >= 1")
  _check(t.restore_step >= -1, "train.restore_step", "must be a saved step, or -1 (newest)")
  _check(all(isinstance(s, int) and s >= 1 for s in t.fault_nonfinite_steps),
         "train.fault_nonfinite_steps", "must be a tuple of steps >= 1")
  _check(t.init_weights in ("ema", "params"), "train.init_weights",
         f"{t.init_weights!r} is not one of ['ema', 'params']")
  _check(isinstance(t.init_step, int) and t.init_step >= -1, "train.init_step",
         "must be a saved step of train.init_from, or -1 (its newest)")
  _check(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0: off)")
  _check(len(t.eval_timesteps) >= 1 and all(0 < x < 1 for x in t.eval_timesteps),
         "train.eval_timesteps", "must be one or more times in (0, 1)")
  _check(t.eval_batches >= 0, "train.eval_batches", "must be >= 0 (0: all)")
  d = config.data
  _check(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", "must be in [0, 1)")
  if t.eval_every:
    _check(bool(d.eval_path) or d.eval_fraction > 0, "train.eval_every",
           "needs a held-out set: data.eval_path or data.eval_fraction > 0")
  _check(not (d.eval_path and d.eval_fraction), "data.eval_fraction",
         "give data.eval_path or data.eval_fraction, not both")
  _check(t.sample_every >= 0, "train.sample_every", "must be >= 0 (0: off)")
  _check(t.sample_num_steps >= 0, "train.sample_num_steps", "must be >= 0 (0: sample.num_steps)")
  if t.sample_every:
    _check(len(t.sample_prompts) >= 1 and all(isinstance(p, str) for p in t.sample_prompts),
           "train.sample_prompts", "needs one or more prompts (or one prompt file path)")
    for p in (x for x in t.sample_prompts if "<shot" in x):
      _check(d.shot_captions, "train.sample_prompts",
             f"{p[:60]!r} has shot tags, but data.shot_captions is off")
      try:
        shots_lib.prompt_text(p, None, d.num_frames / d.fps)
      except shots_lib.ShotError as e:
        _check(False, "train.sample_prompts", str(e))
  a, b = tuple(t.profile_steps) if len(t.profile_steps) == 2 else (-1, -1)
  _check((a, b) == (0, 0) or 1 <= a <= b, "train.profile_steps",
         "must be (first, last) steps with 1 <= first <= last, or (0, 0) (off)")
  _check(t.wandb_mode in ("online", "offline"), "train.wandb_mode",
         f"{t.wandb_mode!r} is not one of ['online', 'offline']")
  lo = t.lora
  _check(isinstance(lo.rank, int) and lo.rank >= 0, "train.lora.rank", "must be an int >= 0")
  if lo.rank:
    _check(lo.alpha >= 0, "train.lora.alpha", "must be >= 0 (0: the rank)")
    _check(lo.base_dtype in ("float32", "bfloat16"), "train.lora.base_dtype",
           f"{lo.base_dtype!r} is not one of ['float32', 'bfloat16']")
    _check(bool(t.init_from), "train.lora.rank", "a LoRA run adapts a base: set "
           "train.init_from to the base run")
    _check(bool(lo.targets), "train.lora.targets", "needs at least one regex")
  for pattern in tuple(t.init_ignore) + tuple(lo.targets):
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      field = "train.init_ignore" if pattern in t.init_ignore else "train.lora.targets"
      raise ConfigError(field, f"{pattern!r} is not a regex: {e}") from None


def derive(config, *, abstract: bool = False) -> tuple[Geometry, MMDiTConfig]:
  """Latent geometry and the MMDiT config; raises ConfigError on incompatible shapes. Reads
  no weights: frozen components give their shapes from converted.json (or, `abstract`, from
  the published architecture when the folder is absent)."""
  m, d = config.model, config.data
  vae, aae = encoders.autoencoder_shapes(config, abstract)
  try:
    t = vae.latent_frames(d.num_frames)
  except ValueError as e:
    raise ConfigError("data.num_frames", str(e))
  _check(t % m.patch_size_t == 0, "data.num_frames",
         f"{d.num_frames} frames give {t} latent frames, not divisible by "
         f"model.patch_size_t={m.patch_size_t}")
  # The cascade base's video stream is the low-res view of the clip; its keyframes are
  # frames of the clip itself (tasks/keyframes.py).
  kf = config.keyframes
  kf_scale = int(kf.scale) if kf.count or kf.frames else 0
  height, width = (d.height // kf_scale, d.width // kf_scale) if kf_scale else (d.height,
                                                                                 d.width)
  try:
    h, w = vae.latent_hw(height, width)
  except ValueError as e:
    raise ConfigError("keyframes.scale" if kf_scale else "data.height", str(e))
  kf_frames, kf_times, kf_grid = (), (), (0, 0)
  if kf_scale:
    try:
      kf_grid = vae.latent_hw(d.height, d.width)
    except ValueError as e:
      raise ConfigError("data.height", str(e))
    _check(kf_grid[0] % m.patch_size == 0 and kf_grid[1] % m.patch_size == 0, "data.height",
           f"keyframe latent grid {kf_grid} not divisible by model.patch_size={m.patch_size}")
    kf_frames, kf_times = keyframes_lib.keyframe_frames(kf, d.num_frames, vae)
  _check(h % m.patch_size == 0 and w % m.patch_size == 0, "data.height",
         f"latent grid {h}x{w} not divisible by model.patch_size={m.patch_size}")
  samples = num_audio_samples(d)
  seconds = (d.num_frames - int(d.endpoint_frame)) / d.fps
  _check(abs(samples - seconds * d.sample_rate) < 1e-6, "data.sample_rate",
         f"{d.num_frames} frames at {d.fps} fps ({seconds} s) is not a whole number of samples "
         f"at {d.sample_rate} Hz")
  audio_length = 0
  if m.use_audio:
    try:
      audio_length = aae.latent_length(samples)
    except ValueError as e:
      raise ConfigError("audio_ae.hop", f"{samples} samples per clip: {e}")
    _check(audio_length % m.audio_patch_size == 0, "model.audio_patch_size",
           f"{audio_length} audio latents not divisible by {m.audio_patch_size}")
  geom = Geometry(
      num_frames=d.num_frames, height=height, width=width, num_samples=samples,
      video_grid=(t, h, w), video_channels=vae.latent_channels, audio_length=audio_length,
      audio_channels=aae.latent_channels,
      video_tokens=(t // m.patch_size_t) * (h // m.patch_size) * (w // m.patch_size),
      audio_tokens=audio_length // m.audio_patch_size, keyframe_frames=kf_frames,
      keyframe_times=kf_times, keyframe_grid=kf_grid,
      keyframe_size=(d.height, d.width) if kf_scale else (0, 0))
  scale = audio_time_scale(fps=d.fps, video_temporal_factor=vae.temporal_factor,
                           patch_size_t=m.patch_size_t, sample_rate=d.sample_rate,
                           audio_hop=aae.hop, audio_patch_size=m.audio_patch_size)
  mcfg = MMDiTConfig(
      width=m.width, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      num_dual_blocks=m.num_dual_blocks, num_single_blocks=m.num_single_blocks,
      video_latent_channels=vae.latent_channels, audio_latent_channels=aae.latent_channels,
      text_dim=encoders.text_width(config, abstract), patch_size=m.patch_size,
      patch_size_t=m.patch_size_t,
      audio_patch_size=m.audio_patch_size, rope_theta=m.rope_theta,
      rope_axes_dim=tuple(m.rope_axes_dim), audio_rope_theta=m.audio_rope_theta,
      audio_time_scale=scale, use_audio=m.use_audio,
      text_cross_attention=m.text_cross_attention, guidance_embed=m.guidance_embed,
      text_refiner_layers=m.text_refiner_layers, max_shots=shot_count(config),
      attention=attention_spec(config), remat=m.remat, scan_blocks=m.scan_blocks,
      dtype=DTYPES[m.dtype], param_dtype=DTYPES[m.param_dtype])
  return geom, mcfg


def attention_spec(config) -> AttentionSpec:
  """The attention strategy with the mesh axes the logical rules give batch, the modality
  sequences and heads (a rule may name several mesh axes, e.g. batch -> (data, fsdp))."""
  table = {k: v for k, v in config.logical_axis_rules}
  as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else ((v,) if v else ())
  seq = as_tuple(table.get("video_seq"))
  heads = as_tuple(table.get("heads"))
  if len(seq) > 1 or len(heads) > 1:
    raise ConfigError("logical_axis_rules", "video_seq and heads map to at most one mesh axis")
  m = config.model
  return AttentionSpec(impl=config.attention, batch_axes=as_tuple(table.get("batch")),
                       sequence_axis=seq[0] if seq else None,
                       head_axis=heads[0] if heads else None,
                       sp_kernel=m.get("sp_kernel", "auto"),
                       vsa_kernel=m.get("vsa_kernel", "auto"),
                       vsa_cube=tuple(int(c) for c in m.vsa_cube), vsa_top_k=int(m.vsa_top_k))


def build_model(config, *, rngs: nnx.Rngs) -> SkyReelsV4:
  """Concrete model (no eager sharding: the trainer places params by logical rules)."""
  _, mcfg = derive(config, abstract=True)    # shapes only: the run validated its paths
  spec = encoders.build_text(config.text, dtype=DTYPES[config.model.dtype],
                             param_dtype=DTYPES[config.model.param_dtype], weights=False,
                             published_if_missing=True)
  with nnx.use_eager_sharding(False):
    return SkyReelsV4(mcfg, spec, rngs=rngs)


def abstract_model(config) -> SkyReelsV4:
  """Shapes and logical axes only (nnx.eval_shape): no memory, any size."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))


def count_params(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _overlay(config: ml_collections.ConfigDict, saved: dict, where: str = "") -> None:
  """`saved` written over `config` in place: JSON lists become the tuples base holds; a
  field base no longer has is kept (and reported)."""
  for key, value in saved.items():
    name = f"{where}{key}"
    if key not in config:
      logging.warning("config field %s is not in configs/base.py: kept as saved", name)
      config[key] = value
    elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _overlay(config[key], value, name + ".")
    else:
      config[key] = _tuples(value) if isinstance(config[key], tuple) else value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's saved config.json over `configs/base.get_config()`: a run written before a
  field existed loads with the field's default."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run directory")
  with open(path) as f:
    saved = json.load(f)
  config = base_config.get_config()
  _overlay(config, saved)
  return config
