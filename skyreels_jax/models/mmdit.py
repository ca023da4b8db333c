"""The SkyReels-V4 dual-stream MMDiT: a video branch and an audio branch of equal width.

Each branch = M dual-stream blocks then N single-stream blocks (SPEC section 1). Layer i of
both branches runs as one scanned "joint layer": self-attention (+ video text
cross-attention) in each branch, then  a' = a + X(Q=a, KV=v),  v'' = v' + X(Q=v', KV=a'),
then the feed-forwards. Blocks are stacked along a `layers` axis and run with `lax.scan`
(one compile per block type), rematerialised by the policy named in the config.

Inputs are channel concatenations Concat(noisy, condition, mask) built by skyreels_jax.tasks;
prepended in-context references use the same channel layout and get negative RoPE times.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from skyreels_jax.models import remat as remat_lib
from skyreels_jax.core import DTYPES, check
from skyreels_jax.models.attention import SP_KERNELS, STRATEGY_NAMES, VSA_KERNELS
from skyreels_jax.models.attention import AttentionSpec
from skyreels_jax.models.blocks import BlockSpec, DualStreamBlock, SingleStreamBlock
from skyreels_jax.models.layers import (AdaLNModulation, ConditionEmbedding, dense, layer_norm,
                                        masked_mean, patchify, unpatchify)
from skyreels_jax.models.token_refiner import TokenRefiner
from skyreels_jax.models.rope import (audio_positions, keyframe_positions, rope_cos_sin,
                                      video_positions)


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
  width: int
  num_heads: int
  mlp_ratio: float
  num_dual_blocks: int
  num_single_blocks: int
  video_latent_channels: int
  audio_latent_channels: int
  text_dim: int
  patch_size: int = 2
  patch_size_t: int = 1
  audio_patch_size: int = 1
  rope_theta: float = 256.0
  rope_axes_dim: tuple[int, ...] = (16, 56, 56)
  audio_rope_theta: float = 10000.0
  audio_time_scale: float = 1.0
  use_audio: bool = True
  text_cross_attention: bool = True
  guidance_embed: bool = False
  text_refiner_layers: int = 0      # HunyuanVideo's token refiner blocks per branch (0: none)
  max_shots: int = 0                # shot-aware text cross-attention over this many shots
  attention: AttentionSpec = AttentionSpec()
  remat: str = "none"
  scan_blocks: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def video_patch(self) -> tuple[int, int, int]:
    return (self.patch_size_t, self.patch_size, self.patch_size)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


class BranchIO(nnx.Module):
  """Per-branch embeddings and output head: patch embedding, text context projection,
  timestep/pooled-text conditioning, AdaLN-continuous output norm and projection."""

  def __init__(self, cfg: MMDiTConfig, in_features: int, out_features: int, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    d = cfg.width
    self.x_embedder = dense(in_features, d, ("patch", "embed"), **kw)
    self.context_embedder = dense(cfg.text_dim, d, ("patch", "embed"), **kw)
    self.time_text_embed = ConditionEmbedding(d, cfg.text_dim, guidance=cfg.guidance_embed, **kw)
    self.text_refiner = (TokenRefiner(d, cfg.text_dim, cfg.num_heads, cfg.text_refiner_layers,
                                      **kw) if cfg.text_refiner_layers else None)
    self.norm_out = AdaLNModulation(d, 2, **kw)
    self.proj_out = dense(d, out_features, ("embed", "patch"), zero_init=True, **kw)

  def text_context(self, text, text_mask, timestep):
    """The branch's text tokens: projected to the width, then refined (token refiner)."""
    x = self.context_embedder(text)
    if self.text_refiner is not None:
      x = self.text_refiner(x, text, text_mask, timestep)
    return x

  def head(self, x, temb):
    scale, shift = self.norm_out(temb)  # diffusers AdaLayerNormContinuous order: scale, shift
    return self.proj_out(layer_norm(x) * (1 + scale) + shift)


def _stack(n: int, make, rngs: nnx.Rngs):
  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return make(r)
  return create(rngs)


class JointLayer(nnx.Module):
  """Layer i of both branches and their audio<->video exchange."""

  def __init__(self, cfg: MMDiTConfig, block_cls, rngs: nnx.Rngs):
    spec = BlockSpec(dim=cfg.width, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                     attention=cfg.attention, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.video = block_cls(spec, rngs, text_cross=cfg.text_cross_attention,
                           av_cross=cfg.use_audio)
    self.audio = block_cls(spec, rngs, text_cross=False, av_cross=True) if cfg.use_audio else None

  def __call__(self, carry, ctx):
    v, v_txt, a, a_txt = (constrain(x, ctx["attention"], seq) for x, seq in
                          zip(carry, (True, False, True, False)))
    v, v_txt, v_mods = self.video.attend(
        v, v_txt, ctx["v_temb"], rope=ctx["v_rope"], x_mask=ctx["v_valid"],
        text_ctx=ctx["v_text"], text_mask=ctx["text_mask"],
        attention_spec=ctx.get("v_attention"), shots=ctx.get("shots"))
    if self.audio is not None and a is not None:
      a, a_txt, a_mods = self.audio.attend(
          a, a_txt, ctx["a_temb"], rope=ctx["a_rope"], x_mask=ctx["a_valid"],
          text_ctx=None, text_mask=ctx["text_mask"])
      # The paper's order: audio attends to video first, then video to the updated audio.
      a = self.audio.cross(a, v, other_mask=ctx["v_valid"], q_rope=ctx["a_time_rope"],
                           k_rope=ctx["v_time_rope"])
      v = self.video.cross(v, a, other_mask=ctx["a_valid"], q_rope=ctx["v_time_rope"],
                           k_rope=ctx["a_time_rope"])
      a, a_txt = self.audio.feed_forward(a, a_txt, a_mods)
    v, v_txt = self.video.feed_forward(v, v_txt, v_mods)
    return v, v_txt, a, a_txt


def constrain(x, spec: AttentionSpec, sequence_sharded: bool):
  """Keeps activations (B, S, D) batch-sharded and, for modality tokens under a sequence-
  parallel strategy, sequence-sharded between attentions. A no-op without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if x is None or mesh.empty or not spec.batch_axes:
    return x
  seq = spec.sequence_axis if sequence_sharded and spec.impl in ("ulysses", "ring") else None
  return jax.lax.with_sharding_constraint(x, P(tuple(spec.batch_axes), seq, None))


def token_multiple(spec: AttentionSpec) -> int:
  """Token streams are padded to a multiple of the sequence axis under sequence parallelism,
  so activations stay evenly sharded from the first layer to the last."""
  mesh = jax.sharding.get_abstract_mesh()
  if spec.impl not in ("ulysses", "ring") or mesh.empty or spec.sequence_axis not in mesh.shape:
    return 1
  return mesh.shape[spec.sequence_axis]


def pad_tokens(x: jax.Array, valid: jax.Array, positions, multiple: int):
  """Pads (B, S, C) tokens, their validity (B, S) and positions (S, n) to a multiple of
  `multiple`; padded tokens are invalid (masked as keys, dropped at the output)."""
  pad = -x.shape[1] % multiple
  if not pad:
    return x, valid, positions
  return (jnp.pad(x, ((0, 0), (0, pad), (0, 0))), jnp.pad(valid, ((0, 0), (0, pad))),
          jnp.pad(positions, ((0, pad), (0, 0)), mode="edge"))


def _run_layers(layers: nnx.Module, carry, ctx, *, remat: str, scan: bool, num: int):
  """Runs stacked layers with lax.scan (or an unrolled loop) under the remat policy."""
  graphdef, state = nnx.split(layers)

  def body(c, layer_state):
    return nnx.merge(graphdef, layer_state)(c, ctx), None

  body = remat_lib.apply(body, remat)
  if scan:
    carry, _ = jax.lax.scan(body, carry, state)
    return carry
  for i in range(num):
    carry, _ = body(carry, jax.tree.map(lambda x: x[i], state))
  return carry


class MMDiT(nnx.Module):
  """The joint video+audio diffusion transformer."""

  def __init__(self, cfg: MMDiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    cv, ca = cfg.video_latent_channels, cfg.audio_latent_channels
    pv = int(np.prod(cfg.video_patch))
    # Input = Concat(noisy, condition, mask): 2C + 1 channels per latent position.
    self.video_io = BranchIO(cfg, (2 * cv + 1) * pv, cv * pv, rngs)
    self.audio_io = (BranchIO(cfg, (2 * ca + 1) * cfg.audio_patch_size,
                              ca * cfg.audio_patch_size, rngs) if cfg.use_audio else None)
    self.dual_layers = _stack(cfg.num_dual_blocks,
                              lambda r: JointLayer(cfg, DualStreamBlock, r), rngs)
    self.single_layers = _stack(cfg.num_single_blocks,
                                lambda r: JointLayer(cfg, SingleStreamBlock, r), rngs)

  def __call__(self, *, video: jax.Array, video_timestep: jax.Array, text: jax.Array,
               text_mask: jax.Array, audio: jax.Array | None = None,
               audio_timestep: jax.Array | None = None, video_refs: jax.Array | None = None,
               video_ref_valid: jax.Array | None = None, audio_refs: jax.Array | None = None,
               audio_ref_valid: jax.Array | None = None, guidance: jax.Array | None = None,
               keyframes: jax.Array | None = None, keyframe_times: tuple[int, ...] = (),
               text_shot: jax.Array | None = None, video_shot: jax.Array | None = None):
    """Predicts the flow velocity of the noisy part of each stream.

    video (B, T, H, W, 2C+1) latent-grid channel concat; video_refs (B, Tr, H, W, 2C+1);
    audio (B, Ta, 2Ca+1); audio_refs (B, Tar, 2Ca+1); text (B, L, text_dim), text_mask (B, L);
    *_ref_valid (B, Tr) booleans for padded reference slots; timesteps (B,) in model units
    (skyreels_jax.diffusion.flow_matching.model_timestep). Returns (video (B, T, H, W, C),
    audio (B, Ta, Ca) or None).

    Keyframes (SPEC section 5): `keyframes` (B, K, Hk, Wk, 2C+1) are single latent frames
    as extra video tokens after the video's, keyframe k at token time `keyframe_times[k]`
    (static ints or a traced (K,) array shared by the batch) with its spatial positions
    scaled onto the video's grid (rope.keyframe_positions). The cascade base generates
    them (high-res, noised); the refiner is given them (Concat(k, k, 1), tasks/refiner.py).
    They share the video timestep and the video branch's weights; the output then has a
    third entry, keyframes (B, K, Hk, Wk, C).

    Shots (cfg.max_shots > 0, tasks/shots.py): text_shot (B, L) the shot of each text token
    (0: global), video_shot (B, T) of each latent frame (0: none); in the video's text
    cross-attention a token of shot k reads only shot k's text tokens and the global ones
    (references, keyframes and frames of no shot read all of it).
    """
    cfg = self.cfg
    if audio is not None and not cfg.use_audio:
      raise ValueError("model.use_audio=False but audio input is given")
    # audio None with use_audio: a batch without sound (images, T2I); the audio branch idles.
    with_audio = audio is not None
    b = video.shape[0]
    text = text.astype(cfg.dtype)
    # With shots the pooled caption (the AdaLN conditioning of every token) is the global
    # text alone: a shot's caption reaches only its own frames (blocks.py).
    shot_text = cfg.max_shots and text_shot is not None
    pooled = masked_mean(text, text_mask & (text_shot == 0) if shot_text else text_mask)
    ctx: dict[str, Any] = {"text_mask": text_mask, "attention": cfg.attention}

    # Video tokens: [references; target], positions on the latent patch grid.
    pt, p, _ = cfg.video_patch
    t, h, w = video.shape[1] // pt, video.shape[2] // p, video.shape[3] // p
    v_in = patchify(video.astype(cfg.dtype), cfg.video_patch)
    n_vref = 0
    v_valid = jnp.ones((b, v_in.shape[1]), bool)
    if video_refs is not None:
      n_vref = video_refs.shape[1] // pt
      r_in = patchify(video_refs.astype(cfg.dtype), cfg.video_patch)
      # One validity per reference token frame (pt latent frames), repeated over its h*w.
      ref_valid = jnp.repeat(video_ref_valid.astype(bool)[:, ::pt], video_refs.shape[2] // p *
                             (video_refs.shape[3] // p), axis=1)
      v_in = jnp.concatenate([r_in, v_in], axis=1)
      v_valid = jnp.concatenate([ref_valid, v_valid], axis=1)
    multiple = token_multiple(cfg.attention)
    v_pos = video_positions((t, h, w), n_vref)
    n_video_end = v_in.shape[1]     # [references; low-res video] end here
    if keyframes is not None:
      if pt != 1:
        raise ValueError(f"keyframes need model.patch_size_t=1 (one latent frame each), got {pt}")
      if len(keyframe_times) != keyframes.shape[1]:
        raise ValueError(f"{keyframes.shape[1]} keyframes but keyframe_times={keyframe_times}")
      kgrid = (keyframes.shape[2] // p, keyframes.shape[3] // p)
      k_in = patchify(keyframes.astype(cfg.dtype).reshape(-1, 1, *keyframes.shape[2:]),
                      cfg.video_patch).reshape(b, -1, v_in.shape[-1])
      v_in = jnp.concatenate([v_in, k_in], axis=1)
      v_valid = jnp.concatenate([v_valid, jnp.ones((b, k_in.shape[1]), bool)], axis=1)
      v_pos = jnp.concatenate([jnp.asarray(v_pos),
                               keyframe_positions(keyframe_times, kgrid, (h, w))])
    n_v = v_in.shape[1]
    if cfg.max_shots and video_shot is not None:
      # one shot per token: the latent frame's, over its h*w; references and keyframes: 0
      per_token = jnp.repeat(jnp.asarray(video_shot, jnp.int32)[:, ::pt], h * w, axis=1)
      pad = jnp.zeros((b, n_video_end - t * h * w), jnp.int32)
      tail = jnp.zeros((b, n_v - n_video_end), jnp.int32)
      v_shot = jnp.concatenate([pad, per_token, tail], axis=1)
      v_shot = jnp.pad(v_shot, ((0, 0), (0, -n_v % multiple)))
      ctx["shots"] = (v_shot, jnp.asarray(text_shot, jnp.int32), cfg.max_shots)
    v_in, v_valid, v_pos = pad_tokens(v_in, v_valid, v_pos, multiple)
    ctx["v_rope"] = rope_cos_sin(v_pos, cfg.rope_axes_dim, cfg.rope_theta)
    if cfg.attention.impl == "vsa":   # sparse over the token grid of this input
      ctx["v_attention"] = dataclasses.replace(cfg.attention, video_grid=(t, h, w))
    ctx["v_valid"] = v_valid
    ctx["v_temb"] = self.video_io.time_text_embed(video_timestep, pooled, guidance)
    v_text = self.video_io.text_context(text, text_mask, video_timestep)
    ctx["v_text"] = v_text
    v = self.video_io.x_embedder(v_in)

    a = a_text = None
    if with_audio:
      ap = cfg.audio_patch_size
      a_in = patchify(audio.astype(cfg.dtype), (ap,))
      a_valid = jnp.ones((b, a_in.shape[1]), bool)
      n_aref = 0
      if audio_refs is not None:
        n_aref = audio_refs.shape[1] // ap
        a_in = jnp.concatenate([patchify(audio_refs.astype(cfg.dtype), (ap,)), a_in], axis=1)
        ref_valid = audio_ref_valid.astype(bool)[:, ::ap]
        a_valid = jnp.concatenate([ref_valid, a_valid], axis=1)
      a_pos = audio_positions(audio.shape[1] // ap, cfg.audio_time_scale, n_aref)
      n_a_all = a_in.shape[1]
      a_in, a_valid, a_pos = pad_tokens(a_in, a_valid, a_pos, multiple)
      hd = cfg.head_dim
      ctx["a_rope"] = rope_cos_sin(a_pos, (hd,), cfg.audio_rope_theta)
      ctx["a_time_rope"] = ctx["a_rope"]
      ctx["v_time_rope"] = rope_cos_sin(v_pos[:, :1], (hd,), cfg.audio_rope_theta)
      ctx["a_valid"] = a_valid
      ctx["a_temb"] = self.audio_io.time_text_embed(audio_timestep, pooled, guidance)
      a_text = self.audio_io.text_context(text, text_mask, audio_timestep)
      a = self.audio_io.x_embedder(a_in)

    carry = (v, v_text, a, a_text)
    carry = _run_layers(self.dual_layers, carry, ctx, remat=cfg.remat, scan=cfg.scan_blocks,
                        num=cfg.num_dual_blocks)
    carry = _run_layers(self.single_layers, carry, ctx, remat=cfg.remat, scan=cfg.scan_blocks,
                        num=cfg.num_single_blocks)
    v, _, a, _ = carry

    # Each head reads its tokens sequence-sharded: with the weights' width on `sequence` too,
    # XLA would otherwise gather the tokens along the sequence for the weight gradient.
    head = lambda io, x, temb: io.head(constrain(x, ctx["attention"], True), temb)
    v_out = head(self.video_io, v[:, n_video_end - t * h * w:n_video_end], ctx["v_temb"])
    v_out = unpatchify(v_out.astype(jnp.float32), (t * pt, h * p, w * p), cfg.video_patch,
                       cfg.video_latent_channels)
    a_out = None
    if with_audio:
      n_a = audio.shape[1] // cfg.audio_patch_size
      a_out = head(self.audio_io, a[:, n_a_all - n_a:n_a_all], ctx["a_temb"])
      a_out = unpatchify(a_out.astype(jnp.float32), (audio.shape[1],),
                         (cfg.audio_patch_size,), cfg.audio_latent_channels)
    if keyframes is None:
      return v_out, a_out
    k_out = head(self.video_io, v[:, n_video_end:n_v], ctx["v_temb"]).astype(jnp.float32)
    k_out = unpatchify(k_out.reshape(b * keyframes.shape[1], -1, k_out.shape[-1]),
                       (1, *keyframes.shape[2:4]), cfg.video_patch, cfg.video_latent_channels)
    return v_out, a_out, k_out.reshape(*keyframes.shape[:-1], cfg.video_latent_channels)


def check_config(config) -> None:
  """model.* and attention (configs/base.py): raises ConfigError naming the field."""
  m = config.model
  check(m.width > 0, "model.width", "must be positive")
  check(m.num_heads > 0 and m.width % m.num_heads == 0, "model.num_heads",
        f"{m.num_heads} heads do not divide model.width={m.width}")
  head_dim = m.width // m.num_heads
  check(head_dim % 2 == 0, "model.num_heads", f"head dim {head_dim} must be even (RoPE)")
  check(len(m.rope_axes_dim) == 3 and sum(m.rope_axes_dim) == head_dim
        and all(a % 2 == 0 for a in m.rope_axes_dim), "model.rope_axes_dim",
        f"{tuple(m.rope_axes_dim)} must be 3 even sizes summing to the head dim {head_dim}")
  check(m.num_dual_blocks >= 1, "model.num_dual_blocks", "need at least one dual block")
  check(m.num_single_blocks >= 0, "model.num_single_blocks", "must be >= 0")
  check(isinstance(m.text_refiner_layers, int) and m.text_refiner_layers >= 0,
        "model.text_refiner_layers", "must be an int >= 0")
  check(m.mlp_ratio > 0, "model.mlp_ratio", "must be positive")
  if m.shot_attention:
    check(m.text_cross_attention, "model.shot_attention",
          "masks the video's text cross-attention: needs model.text_cross_attention")
    check(config.data.shot_captions, "model.shot_attention",
          "reads the shot tags of the caption: needs data.shot_captions")
  for f in ("patch_size", "patch_size_t", "audio_patch_size"):
    check(m[f] >= 1, f"model.{f}", "must be >= 1")
  for f, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES),
                     ("remat", remat_lib.POLICIES)):
    check(m[f] in allowed, f"model.{f}", f"{m[f]!r} is not one of {sorted(allowed)}")
  check(config.attention in STRATEGY_NAMES, "attention",
        f"{config.attention!r} is not one of {sorted(STRATEGY_NAMES)}")
  sp_kernel = m.get("sp_kernel", "auto")
  check(sp_kernel in SP_KERNELS, "model.sp_kernel",
        f"{sp_kernel!r} is not one of {list(SP_KERNELS)} (Ulysses' local attention)")
  vsa_kernel = m.get("vsa_kernel", "auto")
  check(vsa_kernel in VSA_KERNELS, "model.vsa_kernel",
        f"{vsa_kernel!r} is not one of {list(VSA_KERNELS)} (VSA's fine stage)")
  cube = tuple(m.vsa_cube)
  check(len(cube) == 3 and all(isinstance(c, int) and c >= 1 for c in cube), "model.vsa_cube",
        f"{cube} must be 3 positive ints (t, h, w tokens)")
  check(isinstance(m.vsa_top_k, int) and m.vsa_top_k >= 0, "model.vsa_top_k",
        "must be an int >= 0 (0: all cubes)")
