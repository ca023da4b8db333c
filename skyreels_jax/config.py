"""Config validation and the values derived from a config, computed once, before tracing.

`validate(config)` raises `ConfigError` naming the offending field; `derive(config)` returns
the latent geometry and the model config. Nothing here mutates the config.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp

from skyreels_jax.data import buckets as buckets_lib
from skyreels_jax.diffusion.flow_matching import SAMPLERS, SHIFT_MODES
from skyreels_jax.diffusion.solvers import SOLVERS
from skyreels_jax.models import autoencoders
from skyreels_jax.models.attention import STRATEGY_NAMES, AttentionSpec
from skyreels_jax.models import text as text_lib
from skyreels_jax.models.mmdit import MMDiTConfig
from skyreels_jax.models.remat import POLICIES
from skyreels_jax.models.rope import audio_time_scale
from skyreels_jax.tasks import AUDIO_TASKS, VIDEO_TASKS
from skyreels_jax.tasks import keyframes as keyframes_lib
from skyreels_jax.tasks.refiner import low_res_frames

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


def _choice(value, field: str, allowed):
  _check(value in allowed, field, f"{value!r} is not one of {sorted(allowed)}")


def num_audio_samples(data) -> int:
  return buckets_lib.samples_for_frames(data.num_frames, data.fps, data.sample_rate,
                            data.get("endpoint_frame", False))


def validate(config, *, abstract: bool = False) -> None:
  """Raises ConfigError naming the field. `abstract`: shapes only, for planning tools: a
  frozen component whose converted folder is absent takes its published architecture
  (models/frozen.py) instead of failing."""
  m, d = config.model, config.data
  _check(m.width > 0, "model.width", "must be positive")
  _check(m.num_heads > 0 and m.width % m.num_heads == 0, "model.num_heads",
         f"{m.num_heads} heads do not divide model.width={m.width}")
  head_dim = m.width // m.num_heads
  _check(head_dim % 2 == 0, "model.num_heads", f"head dim {head_dim} must be even (RoPE)")
  _check(len(m.rope_axes_dim) == 3 and sum(m.rope_axes_dim) == head_dim
         and all(a % 2 == 0 for a in m.rope_axes_dim), "model.rope_axes_dim",
         f"{tuple(m.rope_axes_dim)} must be 3 even sizes summing to the head dim {head_dim}")
  _check(m.num_dual_blocks >= 1, "model.num_dual_blocks", "need at least one dual block")
  _check(m.num_single_blocks >= 0, "model.num_single_blocks", "must be >= 0")
  _check(m.mlp_ratio > 0, "model.mlp_ratio", "must be positive")
  _check(not m.guidance_embed, "model.guidance_embed",
         "no trainer or sampler passes a guidance value yet (it comes with loading "
         "HunyuanVideo's guidance-distilled weights); leave it False")
  for f in ("patch_size", "patch_size_t", "audio_patch_size"):
    _check(m[f] >= 1, f"model.{f}", "must be >= 1")
  _choice(m.dtype, "model.dtype", DTYPES)
  _choice(m.param_dtype, "model.param_dtype", DTYPES)
  _choice(m.remat, "model.remat", POLICIES)
  _choice(config.attention, "attention", STRATEGY_NAMES)
  cube = tuple(m.get("vsa_cube", (4, 4, 4)))
  _check(len(cube) == 3 and all(isinstance(c, int) and c >= 1 for c in cube), "model.vsa_cube",
         f"{cube} must be 3 positive ints (t, h, w tokens)")
  _check(isinstance(m.get("vsa_top_k", 0), int) and m.get("vsa_top_k", 0) >= 0,
         "model.vsa_top_k", "must be an int >= 0 (0: all cubes)")
  if config.attention == "ulysses":
    tensor, seq = config.mesh.tensor, config.mesh.sequence
    if tensor > 0 and seq > 0:
      _check(m.num_heads % (tensor * seq) == 0, "model.num_heads",
             f"attention=ulysses splits {m.num_heads} heads over mesh.tensor={tensor} x "
             f"mesh.sequence={seq}")
  _choice(config.flow.timestep_sampling, "flow.timestep_sampling", SAMPLERS)
  _check(config.flow.shift > 0, "flow.shift", "must be positive")
  _choice(config.flow.shift_mode, "flow.shift_mode", SHIFT_MODES)
  _choice(config.sample.shift_mode, "sample.shift_mode", SHIFT_MODES)
  _check(config.flow.shift_base_tokens >= 1, "flow.shift_base_tokens", "must be >= 1")
  _choice(config.sample.solver, "sample.solver", SOLVERS)
  _check(config.sample.num_steps >= 1, "sample.num_steps", "must be >= 1")

  for f in ("height", "width", "num_frames", "sample_rate", "audio_channels", "batch_size"):
    _check(d[f] >= 1, f"data.{f}", "must be >= 1")
  _check(d.fps > 0, "data.fps", "must be positive")
  unknown = set(d.tasks.keys()) - set(VIDEO_TASKS)
  _check(not unknown, "data.tasks", f"unknown tasks {sorted(unknown)}; known: {VIDEO_TASKS}")
  weights = [float(v) for v in d.tasks.values()]
  _check(all(w >= 0 for w in weights) and sum(weights) > 0, "data.tasks",
         "weights must be >= 0 with a positive sum")
  unknown = set(d.audio_tasks.keys()) - set(AUDIO_TASKS)
  _check(not unknown, "data.audio_tasks", f"unknown audio tasks {sorted(unknown)}; known: "
         f"{AUDIO_TASKS}")
  weights = [float(v) for v in d.audio_tasks.values()]
  _check(all(w >= 0 for w in weights) and sum(weights) > 0, "data.audio_tasks",
         "weights must be >= 0 with a positive sum")
  _check(0.0 <= d.caption_dropout < 1.0, "data.caption_dropout", "must be in [0, 1)")
  _check_references(config)

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

  fills = [a for a in MESH_AXES if config.mesh[a] == -1]
  _check(len(fills) <= 1, "mesh", f"at most one axis may be -1, got {fills}")
  for a in MESH_AXES:
    _check(config.mesh[a] == -1 or config.mesh[a] >= 1, f"mesh.{a}", "must be -1 or >= 1")
    dcn = config.mesh.get(f"dcn_{a}", 1)
    _check(isinstance(dcn, int) and dcn >= 1, f"mesh.dcn_{a}",
           f"must be an int >= 1 (slices along {a}), got {dcn!r}")
  derive(config, abstract=abstract)  # shape checks that need the autoencoders
  _check_buckets(config, abstract)
  _check_refiner(config, abstract)
  _check_keyframes(config)


def _check_references(config) -> None:
  """data.refs & co (data/references.py): a mixture, sizes the autoencoders take."""
  d = config.data
  unknown = set(d.refs.keys()) - {"none", "image", "video"}
  _check(not unknown, "data.refs", f"unknown kinds {sorted(unknown)}; known: none, image, "
         "video")
  weights = [float(v) for v in d.refs.values()]
  _check(all(w >= 0 for w in weights) and sum(weights) > 0, "data.refs",
         "weights must be >= 0 with a positive sum")
  _check(0.0 <= d.audio_ref_rate <= 1.0, "data.audio_ref_rate", "must be in [0, 1]")
  _check(0.0 < d.ref_crop_min <= 1.0, "data.ref_crop_min", "must be in (0, 1]")
  if d.refs.get("image", 0) > 0:
    _check(isinstance(d.ref_images, int) and d.ref_images >= 1, "data.ref_images",
           "must be an int >= 1")
  if d.refs.get("video", 0) > 0:
    _check(isinstance(d.ref_video_frames, int) and d.ref_video_frames >= 1,
           "data.ref_video_frames", "must be an int >= 1")
    vae = autoencoders.build_video(config.video_ae, weights=False, published_if_missing=True)
    try:
      vae.latent_frames(d.ref_video_frames)
    except ValueError as e:
      raise ConfigError("data.ref_video_frames", str(e)) from None
  if d.audio_ref_rate > 0:
    _check(d.audio_ref_seconds > 0, "data.audio_ref_seconds", "must be positive")
  if d.audio_ref_rate > 0 or any(d.refs.get(k, 0) > 0 for k in ("image", "video")):
    _check(d.format == "clips", "data.refs", "references are cut from pixel clips: needs "
           "data.format=clips")


def _check_refiner(config, abstract: bool = False) -> None:
  """refiner.*: the low-res view of the data clip (tasks/refiner.py) must be a clip the
  video autoencoder encodes, and its keyframes single latent frames."""
  r, d = config.get("refiner"), config.data
  if r is None or not r.enabled:
    return
  for f in ("scale", "time_scale"):
    _check(isinstance(r[f], int) and r[f] >= 1, f"refiner.{f}", f"must be an int >= 1, got "
           f"{r[f]!r}")
  _check(d.height % r.scale == 0 and d.width % r.scale == 0, "refiner.scale",
         f"data {d.height}x{d.width} (the target) does not divide by {r.scale}")
  _check(0.0 <= r.noise_low < 1.0, "refiner.noise_low", "must be in [0, 1)")
  k = r.get("num_keyframes", 0)
  _check(isinstance(k, int) and 0 <= k <= d.num_frames, "refiner.num_keyframes",
         f"must be an int in [0, data.num_frames={d.num_frames}], got {k!r}")
  _check(not k or config.model.patch_size_t == 1, "model.patch_size_t",
         "refiner keyframes are single latent frames: need 1")
  # The low-res view is cut from each pixel clip: not from latents, nor per bucket.
  _check(d.format == "clips", "data.format", "the refiner trains on clips")
  _check(not d.resolutions and not d.durations, "data.resolutions",
         "the refiner trains on one geometry (no buckets)")
  vae = autoencoders.build_video(config.video_ae, weights=False, published_if_missing=abstract)
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


def _check_keyframes(config) -> None:
  """keyframes.*: a low-res video stream the model patches and keyframes in the clip."""
  k, d = config.get("keyframes"), config.data
  if k is None or not (k.count or k.frames):
    return
  _check(isinstance(k.count, int) and k.count >= 0, "keyframes.count", "must be an int >= 0")
  _check(isinstance(k.scale, int) and k.scale >= 1, "keyframes.scale", "must be an int >= 1")
  _check(d.height % k.scale == 0 and d.width % k.scale == 0, "keyframes.scale",
         f"data {d.height}x{d.width} (the high-res clip) does not divide by {k.scale}")
  bad = [f for f in k.frames if not (isinstance(f, int) and 0 <= f < d.num_frames)]
  _check(not bad, "keyframes.frames", f"{bad} not frame indices in [0, {d.num_frames})")
  _check(config.model.patch_size_t == 1, "model.patch_size_t",
         "keyframes are single latent frames: need 1")
  _check(d.format == "clips", "data.format", "keyframes are cut from pixel clips")
  _check(not config.get("refiner", {}).get("enabled"), "keyframes.count",
         "the refiner takes the base model's keyframes; it does not make them")


def _check_buckets(config, abstract: bool) -> None:
  """data.format, data.resolutions / durations / bucket_weights: every bucket must give
  latent and token grids the model can patch (the same checks as the single geometry)."""
  d = config.data
  _choice(d.format, "data.format", ("clips", "latents"))
  for r in d.resolutions:
    _check(len(r) == 2 and all(int(v) >= 1 for v in r), "data.resolutions",
           f"expected (height, width) pairs, got {r!r}")
  for s in d.durations:
    frames = float(s) * d.fps
    _check(float(s) > 0 and abs(frames - round(frames)) < 1e-6, "data.durations",
           f"durations must be positive seconds of whole frames at data.fps={d.fps}, got {s!r}")
  all_buckets = buckets_lib.all_buckets(d)
  names = {b.name for b in all_buckets}
  unknown = sorted(set(d.bucket_weights.keys()) - names)
  _check(not unknown, "data.bucket_weights", f"unknown buckets {unknown}; this config's "
         f"buckets: {sorted(names)}")
  _check(all(float(w) >= 0 for w in d.bucket_weights.values()), "data.bucket_weights",
         "weights must be >= 0")
  for b in all_buckets:
    if b.kind == "audio":
      continue
    probe = config.copy_and_resolve_references()
    probe.data.height, probe.data.width = b.height, b.width
    probe.data.num_frames = b.num_frames if b.kind == "video" else probe.data.num_frames
    field = "data.resolutions" if (b.height, b.width) != (d.height, d.width) else "data.height"
    try:
      derive(probe, abstract=abstract)
    except ConfigError as e:
      raise ConfigError(field if b.kind == "image" or "frames" not in str(e)
                        else "data.durations", f"bucket {b.name}: {e}") from None


def derive(config, *, abstract: bool = False) -> tuple[Geometry, MMDiTConfig]:
  """Latent geometry and the MMDiT config; raises ConfigError on incompatible shapes. Reads
  no weights: frozen components give their shapes from converted.json (or, `abstract`, from
  the published architecture when the folder is absent)."""
  m, d = config.model, config.data
  shapes = dict(weights=False, published_if_missing=abstract)
  try:
    vae = autoencoders.build_video(config.video_ae, **shapes)
  except ValueError as e:
    raise ConfigError(_ae_field("video_ae", config.video_ae.kind, autoencoders.KINDS_VIDEO,
                                str(e)), str(e)) from None
  try:
    aae = autoencoders.build_audio(config.audio_ae, d.audio_channels, **shapes)
  except ValueError as e:
    raise ConfigError(_ae_field("audio_ae", config.audio_ae.kind, autoencoders.KINDS_AUDIO,
                                str(e)), str(e)) from None
  rate = getattr(aae, "sampling_rate", None)
  _check(rate is None or rate == d.sample_rate, "data.sample_rate",
         f"{d.sample_rate} Hz, but the audio autoencoder works at {rate} Hz")
  try:
    t = vae.latent_frames(d.num_frames)
  except ValueError as e:
    raise ConfigError("data.num_frames", str(e))
  _check(t % m.patch_size_t == 0, "data.num_frames",
         f"{d.num_frames} frames give {t} latent frames, not divisible by "
         f"model.patch_size_t={m.patch_size_t}")
  # The cascade base's video stream is the low-res view of the clip; its keyframes are
  # frames of the clip itself (tasks/keyframes.py).
  kf = config.get("keyframes")
  kf_scale = int(kf.scale) if kf is not None and (kf.count or kf.frames) else 0
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
  seconds = (d.num_frames - int(d.get("endpoint_frame", False))) / d.fps
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
      text_dim=text_width(config, abstract), patch_size=m.patch_size, patch_size_t=m.patch_size_t,
      audio_patch_size=m.audio_patch_size, rope_theta=m.rope_theta,
      rope_axes_dim=tuple(m.rope_axes_dim), audio_rope_theta=m.audio_rope_theta,
      audio_time_scale=scale, use_audio=m.use_audio,
      text_cross_attention=m.text_cross_attention, guidance_embed=m.guidance_embed,
      attention=attention_spec(config), remat=m.remat, scan_blocks=m.scan_blocks,
      dtype=DTYPES[m.dtype], param_dtype=DTYPES[m.param_dtype])
  return geom, mcfg


def text_width(config, abstract: bool = False) -> int:
  """The text embedding width: `text.width`, which a frozen encoder's checkpoint must match."""
  t = config.text
  _choice(t.kind, "text.kind", text_lib.KINDS)
  try:
    spec = text_lib.build(t, dtype=jnp.float32, param_dtype=jnp.float32, weights=False,
                          published_if_missing=abstract)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError("text.path", str(e)) from None
  _check(spec.width == t.width, "text.width",
         f"{t.width}, but the {t.kind} encoder at {t.get('path', '')!r} gives {spec.width}-wide "
         "embeddings")
  return spec.width


def _ae_field(section: str, kind: str, kinds, message: str = "") -> str:
  """The field an autoencoder build error is about: one the message names first
  ("video_ae.tile_width: ..."), else the kind, or a checkpoint's path."""
  named = message.split(":", 1)[0]
  if re.fullmatch(rf"{section}\.[a-z_]+", named):
    return named
  return f"{section}.path" if kind in kinds and kind != "identity" else f"{section}.kind"


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
                       vsa_cube=tuple(int(c) for c in m.get("vsa_cube", (4, 4, 4))),
                       vsa_top_k=int(m.get("vsa_top_k", 0)))


def count_params(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
