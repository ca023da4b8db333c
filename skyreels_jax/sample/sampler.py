"""Sampling from a training workdir: EMA params restored onto the sampling mesh, an ODE solver
over the flow, classifier-free guidance with one scale per modality, batched along the batch
axis (cond and uncond halves in one forward), decoding with the run's autoencoders.

Every task goes through the same channel-concat interface as training (SPEC section 3):
conditions.py builds pixels, waveforms and keep masks on the host; they are encoded here,
inside the sampling program, and references are prepended as Concat(ref, ref, 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.config import (DTYPES, abstract_model, derive,  # noqa: F401
                                 load_run_config, validate)
from skyreels_jax.data.shots import TOKEN_FIELDS
from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.diffusion.guidance import guide
from skyreels_jax.diffusion.solvers import solve
from skyreels_jax.parallel.mesh import make_mesh, place_tree, rules, state_shardings
from skyreels_jax.tasks.examples import make_codecs, prepended_refs
from skyreels_jax.sample import conditions
from skyreels_jax.tasks.masks import channel_concat, condition_latent, given
from skyreels_jax.tasks.refiner import start_time, still_latents
from skyreels_jax.tasks import shots as shots_lib
from skyreels_jax.weights import lora, runs
from skyreels_jax.weights.trees import summary, with_shardings


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  num_steps: int
  solver: str
  shift: float
  video_guidance: float
  audio_guidance: float
  seed: int
  embedded_guidance: float = 6.0   # model.guidance_embed only


class Sampler:
  """Generates clips with the EMA params of a run's latest (or given) checkpoint."""

  def __init__(self, workdir: str, *, step: int | None = None, config=None, mesh=None,
               lora_merged: bool = True):
    """A LoRA run (train.lora.rank > 0) samples its base (re-read from the checkpoint its
    init_report.json records) with its EMA adapters: `lora_merged` folds them into the
    weights once; otherwise base and adapters stay apart and every call folds them inside
    the program (the same output, less memory between calls, more work per call)."""
    abstract = self._setup(config if config is not None else load_run_config(workdir), mesh)
    axis_rules = rules(self.config)
    # The EMA params alone, by their logical axes onto this mesh: no optimizer, no trainer.
    shardings = state_shardings(abstract, self.mesh, axis_rules)
    self.lora_scale = None
    lo = self.config.train.lora
    if lo.rank > 0:
      adapters = lora.abstract_adapters(abstract, lo.targets, lo.rank,
                                        DTYPES[self.config.model.param_dtype])
      self.step, adapters = runs.read(workdir, "ema", with_shardings(
          adapters, state_shardings(adapters, self.mesh, axis_rules)), step=step)
      base = lora.typed(abstract, DTYPES[lo.base_dtype])
      base = runs.read_base(workdir, with_shardings(
          base, state_shardings(base, self.mesh, axis_rules)))
      self.lora_scale = lora.scale(lo.rank, lo.alpha)
      self.params = (base, adapters)
      if lora_merged:
        with jax.set_mesh(self.mesh):
          self.params = jax.jit(self._resolve, out_shardings=shardings)(self.params)
    else:
      self.step, self.params = runs.read(workdir, "ema", with_shardings(abstract, shardings),
                                         step=step)
    self.codecs, self.tokenizer = make_codecs(self.config)
    # Frozen encoder / VAE weights are arguments of the sampling program, not constants.
    self.frozen, _ = place_tree(self.codecs.frozen_params(), self.mesh, axis_rules)
    logging.info("sampling %s at step %d: EMA %s; frozen %s", workdir, self.step,
                 summary(self.params), summary(self.frozen))
    self._programs()

  @classmethod
  def from_params(cls, config, params, *, step: int, mesh, codecs, tokenizer, frozen,
                  lora_scale: float | None = None) -> "Sampler":
    """A sampler of params already on `mesh` (a training run's EMA weights, a LoRA run's
    folded), with the run's codecs, tokenizer and placed frozen weights: samples during
    training through this same code, nothing read or copied; a LoRA run's params are
    (base, adapters), folded inside the program with `lora_scale`. Set `.params` / `.step`
    to sample newer weights: the programs take them as arguments (no recompile)."""
    self = cls.__new__(cls)
    self._setup(config, mesh)
    self.step, self.params, self.lora_scale = step, params, lora_scale
    self.codecs, self.tokenizer, self.frozen = codecs, tokenizer, frozen
    self._programs()
    return self

  def _setup(self, config, mesh):
    """Config, geometry and mesh; returns the abstract params."""
    self.config = config
    validate(self.config)
    self.geometry, self.mcfg = derive(self.config)
    self.mesh = mesh if mesh is not None else make_mesh(self.config.mesh)
    self.graphdef, abstract = nnx.split(abstract_model(self.config), nnx.Param)
    return abstract

  def _programs(self):
    self._on_step = None
    self._fn = jax.jit(self._generate, static_argnums=(0,))
    # One program per batch size (the cascade asks once per batch): not a new jit per call.
    self._condition_fn = jax.jit(
        lambda batch, frozen, cond: self._encode_condition(self.codecs.bind(frozen), cond,
                                                           batch), static_argnums=(0,))

  def _resolve(self, params):
    """The model's params: (base, adapters) of a LoRA run folded, else as they are."""
    if isinstance(params, tuple):
      return lora.merge(*params, self.lora_scale)
    return params

  def settings(self, **overrides) -> SampleSettings:
    """The run's sampling defaults (config.sample) with `overrides`; with
    sample.shift_mode=auto the shift follows this geometry's token count, as in training."""
    s, m = self.config.sample, self.config.model
    tokens = fm.video_tokens(self.geometry.video_grid, m.patch_size_t, m.patch_size)
    shift = fm.resolution_shift(s.shift, tokens, mode=s.shift_mode,
                                base_tokens=self.config.flow.shift_base_tokens)
    base = dict(num_steps=s.num_steps, solver=s.solver, shift=shift,
                video_guidance=s.video_guidance, audio_guidance=s.audio_guidance, seed=0,
                embedded_guidance=s.embedded_guidance)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SampleSettings(**base)

  def _generate(self, static: tuple[int, str], params, frozen, text_ids, text_mask, cond,
                keys, scalars, shots):
    """static: (num_steps, solver, ticks), the program's shape (ticks: report each solver
    step to self._on_step); scalars: (shift, video guidance, audio guidance, embedded
    guidance), traced, so new values do not recompile; shots: the tokenizer's text_shot and
    shot_spans (model.shot_attention), else {}."""
    num_steps, solver, ticks = static
    shift, video_guidance, audio_guidance = scalars[0], scalars[1], scalars[2]
    model = nnx.merge(self.graphdef, self._resolve(params))
    codecs = self.codecs.bind(frozen)
    g = self.geometry
    b = text_ids.shape[0]
    null_ids = jnp.broadcast_to(codecs.null_text_ids, text_ids.shape)
    null_mask = jnp.broadcast_to(codecs.null_text_mask, text_mask.shape)
    text, tmask = codecs.encode_text(model, jnp.concatenate([text_ids, null_ids]),
                                     jnp.concatenate([text_mask, null_mask]))
    c = self._encode_condition(codecs, cond, b)
    use_audio = self.mcfg.use_audio
    # One key per prompt: a prompt's sample depends on its seed only, not on its batch.
    k_v, k_a, k_k = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0)
    noise = lambda keys, shape: jax.vmap(lambda k: jax.random.normal(k, shape))(keys)
    z_v = eps_v = noise(k_v, (*g.video_grid, g.video_channels))
    # refiner.start_t = s: start at t = s from the upsampled base output partly noised, as
    # its training drew (tasks/refiner.start_path); 0: from noise.
    start = start_time(self.config)
    if start > 0:
      z_v = start * c["cond_video"] + (1.0 - start) * z_v
    # The cascade refiner is given the base model's audio (`given_audio`): fed clean at
    # t = 1 as in its training (tasks/examples._refiner_inputs), not integrated.
    given_a = c.get("given_audio")
    z_a = (noise(k_a, (g.audio_length, g.audio_channels))
           if use_audio and given_a is None else None)
    # The cascade base generates high-res keyframes jointly (tasks/keyframes.py).
    kf_times = g.keyframe_times
    z_k = noise(k_k, (len(kf_times), *g.keyframe_grid, g.video_channels)) if kf_times else None
    two = lambda x: jnp.concatenate([x, x])
    fixed = {k: two(c[k]) for k in ("video_refs", "video_ref_valid", "audio_refs",
                                    "audio_ref_valid") if k in c}
    if given_a is not None:
      fixed["audio"] = two(given(given_a))
      fixed["audio_timestep"] = jnp.full((2 * b,), fm.model_timestep(1.0))
    if "keyframes" in c:    # the cascade refiner's given keyframes (tasks/refiner.py)
      fixed["keyframes"] = two(given(c["keyframes"]))
      fixed["keyframe_times"] = c["keyframe_times"]
    if kf_times:
      empty_k = jnp.broadcast_to(codecs.empty_video_latent(1, *g.keyframe_size), z_k.shape)
      fixed["keyframe_times"] = kf_times
    if self.mcfg.guidance_embed:
      fixed["guidance"] = jnp.full((2 * b,), fm.model_guidance(scalars[3]))
    if shots:    # the unconditional half has no shots: every token is global there
      fixed.update(shots_lib.shot_inputs(
          self.config, {k: two(x) for k, x in shots.items()}, jnp.arange(2 * b) < b,
          num_frames=g.num_frames, num_latent=g.video_grid[0],
          temporal_factor=self.temporal_factor))

    # Kept positions (I2V frames, extension prefix, the outside of an inpainting mask) follow
    # what training fed the model there: the interpolant t I + (1 - t) eps of the condition
    # with this sample's starting noise, and its exact velocity I - eps. So every solver step
    # sees a state the model was trained on, and t = 1 lands on the condition itself.
    kept_v = c["keep_v"] > 0.5
    kept_a = c["keep_a"] > 0.5 if z_a is not None else None
    eps_a = z_a

    on_path = lambda z, cond, eps, kept, t: jnp.where(kept, fm.noisy(cond, eps, t), z)
    as_v = lambda out, z, t, stream: fm.velocity_from(out, two(z), t,
                                                     self.config.flow[f"{stream}_prediction"])
    path_velocity = lambda v, cond, eps, kept: jnp.where(kept, fm.velocity_target(cond, eps), v)

    def velocity(z, t):
      zv, za, zk = z
      zv = on_path(zv, c["cond_video"], eps_v, kept_v, t)
      ts = jnp.full((2 * b,), fm.model_timestep(t))
      inputs = {"video": two(channel_concat(zv, c["cond_video"], c["keep_v"])),
                "video_timestep": ts, **fixed}
      if za is not None:
        za = on_path(za, c["cond_audio"], eps_a, kept_a, t)
        inputs["audio"] = two(channel_concat(za, c["cond_audio"], c["keep_a"]))
        inputs["audio_timestep"] = ts
      if zk is not None:
        inputs["keyframes"] = two(channel_concat(zk, empty_k, jnp.zeros(zk.shape[:-1] + (1,))))
      v, a, *k = model(text=text, text_mask=tmask, **inputs)
      v = as_v(v, zv, t, "video")
      a = as_v(a, za, t, "audio") if za is not None else a
      k = [as_v(k[0], zk, t, "video")] if zk is not None else k   # keyframes: video's
      v = path_velocity(guide(v[:b], v[b:], video_guidance), c["cond_video"], eps_v,
                        kept_v)
      a = (path_velocity(guide(a[:b], a[b:], audio_guidance), c["cond_audio"],
                         eps_a, kept_a) if za is not None else None)
      k = guide(k[0][:b], k[0][b:], video_guidance) if zk is not None else None
      return v, a, k

    times = start + (1.0 - start) * fm.sampling_times(num_steps, shift)
    z_v, z_a, z_k = solve(solver, velocity, (z_v, z_a, z_k), times,
                          self._tick if ticks else None)
    # The interpolant at t = 1 is the condition: exact, not up to the float sum of the steps.
    z_v = on_path(z_v, c["cond_video"], eps_v, kept_v, 1.0)
    out = {"video": codecs.video_ae.decode(z_v), "audio": None, "video_latent": z_v,
           "audio_latent": None}
    if use_audio:
      z_a = (given_a if given_a is not None
             else on_path(z_a, c["cond_audio"], eps_a, kept_a, 1.0))
      out["audio"] = codecs.audio_ae.decode(z_a)[:, :g.num_samples]
      out["audio_latent"] = z_a
    if z_k is not None:
      stills = codecs.video_ae.decode(z_k.reshape(-1, 1, *z_k.shape[2:]))
      out["keyframe_latent"] = z_k
      out["keyframes"] = stills.reshape(b, z_k.shape[1], *stills.shape[2:])
    return out

  def _encode_condition(self, codecs, cond: dict, batch: int) -> dict:
    """Condition latents I (SPEC section 3: the clean latent where kept, the black frame's /
    silence's elsewhere, as in training), keep masks and references, broadcast to the batch."""
    g = self.geometry
    wide = lambda x: jnp.broadcast_to(x, (batch, *x.shape[1:]))
    empty_v = codecs.empty_video_latent(g.num_frames, g.height, g.width)
    keep_v = wide(cond["keep_v"])
    if "cond_latent" in cond:    # a latent condition given as it is (the cascade refiner's)
      out = {"keep_v": keep_v, "cond_video": wide(cond["cond_latent"])}
      if "keyframes" in cond:
        out["keyframes"] = wide(cond["keyframes"])
        out["keyframe_times"] = jnp.asarray(cond["keyframe_times"], jnp.float32)
    else:
      out = {"keep_v": keep_v,
             "cond_video": wide(condition_latent(codecs.video_ae.encode(cond["frames"]),
                                                 cond["keep_v"], empty_v))}
    if "given_audio" in cond:
      out["given_audio"] = wide(cond["given_audio"])
    elif self.mcfg.use_audio:
      empty_a = codecs.empty_audio_latent(g.num_samples, self.config.data.audio_channels)
      out["keep_a"] = wide(cond["keep_a"])
      out["cond_audio"] = wide(condition_latent(codecs.audio_ae.encode(cond["audio"]),
                                                cond["keep_a"], empty_a))
    # References exactly as training encodes them (tasks/examples.py): images as stills,
    # the clip whole, prepended right-aligned next to the target.
    refs = []
    if cond.get("ref_images") is not None:   # (N, F1, H, W, 3): each image as a short clip
      refs.append(still_latents(codecs.video_ae, cond["ref_images"][None, :, 0]))
    if cond.get("ref_video") is not None:
      refs.append(codecs.video_ae.encode(cond["ref_video"]))
    if refs:
      z = jnp.concatenate(refs, axis=1)
      out["video_refs"], out["video_ref_valid"] = map(wide, prepended_refs(
          z, jnp.ones(z.shape[:2], bool), self.mcfg.patch_size_t))
    if self.mcfg.use_audio and cond.get("audio_ref") is not None:
      z = codecs.audio_ae.encode(cond["audio_ref"])
      out["audio_refs"], out["audio_ref_valid"] = map(wide, prepended_refs(
          z, jnp.ones(z.shape[:2], bool), self.mcfg.audio_patch_size))
    return out

  def condition_inputs(self, condition, batch: int = 1) -> dict[str, np.ndarray]:
    """What the model receives for a condition (for inspection and tests)."""
    with jax.set_mesh(self.mesh):
      out = self._condition_fn(batch, self.frozen, self._condition_arrays(condition))
    return {k: np.asarray(jax.device_get(v)) for k, v in out.items()}

  def _condition_arrays(self, condition) -> dict:
    g = self.geometry
    c = condition or conditions.text_to_video(g)
    arrays = {"frames": c.frames, "keep_v": c.keep_v, "ref_images": c.ref_images,
              "ref_video": c.ref_video}
    if self.mcfg.use_audio:   # always present, so every task with audio is one program
      arrays["audio"] = (c.audio if c.audio is not None else
                         np.zeros((1, g.num_samples, self.config.data.audio_channels), np.float32))
      arrays["keep_a"] = (c.keep_a if c.keep_a is not None else
                          np.zeros((1, g.audio_length, 1), np.float32))
      arrays["audio_ref"] = c.audio_ref
    return arrays

  def _tick(self, i) -> None:
    """The solver's host callback: forwards step i to this call's `on_step`."""
    if self._on_step is not None:
      self._on_step(int(i))

  @property
  def temporal_factor(self) -> int:
    return self.codecs.video_ae.temporal_factor

  def generate(self, prompts: list[str], *, condition: conditions.Condition | None = None,
               image: np.ndarray | None = None, seeds: list[int] | None = None,
               settings: SampleSettings | None = None,
               latent_condition: dict[str, np.ndarray] | None = None,
               on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Returns uint8 video (B, F, H, W, 3), float audio (B, S, C) (or None) and the final
    latents; a cascade base also uint8 `keyframes` (B, K, Hk, Wk, 3) and their latents.
    seeds: one per prompt (default settings.seed + index). image: shorthand for an
    image-to-video condition (uint8 H x W x 3). latent_condition: the condition as latents,
    {"cond_latent", "keep_v"[, "given_audio", "keyframes", "keyframe_times"]} with a batch
    axis (but keyframe_times (K,), shared) (sample/cascade.py). on_step(i): called on
    process 0 as solver step i runs (a progress bar). It is its own program, one that the
    persistent cache does not keep, and every process must pass one or none alike."""
    settings = settings or self.settings()
    if image is not None:
      condition = conditions.image_to_video(self.geometry, self.temporal_factor, image)
    if seeds is None:
      seeds = [settings.seed + i for i in range(len(prompts))]
    tokens = self.tokenizer.batch(prompts)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    # Only the step count and the solver shape the program: a new seed, shift or guidance
    # scale does not recompile.
    static = (settings.num_steps, settings.solver, on_step is not None)
    scalars = jnp.asarray([settings.shift, settings.video_guidance, settings.audio_guidance,
                           settings.embedded_guidance], jnp.float32)
    with jax.set_mesh(self.mesh):
      cond = (latent_condition if latent_condition is not None
              else self._condition_arrays(condition))
      shots = {k: jnp.asarray(tokens[k]) for k in TOKEN_FIELDS if k in tokens}
      self._on_step = on_step
      try:
        out = self._fn(static, self.params, self.frozen, jnp.asarray(tokens["text_ids"]),
                       jnp.asarray(tokens["text_mask"]), cond, keys, scalars, shots)
        out = jax.device_get(out)
      finally:
        self._on_step = None
    as_uint8 = lambda x: np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(
        np.uint8)
    as_np = lambda x: None if x is None else np.asarray(x, np.float32)
    result = {"video": as_uint8(out["video"]), "audio": as_np(out["audio"]),
              "video_latent": as_np(out["video_latent"]),
              "audio_latent": as_np(out["audio_latent"])}
    if "keyframes" in out:
      result.update(keyframes=as_uint8(out["keyframes"]),
                    keyframe_latent=as_np(out["keyframe_latent"]))
    return result
