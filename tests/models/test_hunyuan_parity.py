"""Numerical parity of the video branch with diffusers' HunyuanVideo transformer (float32, CPU).

Every diffusers tensor is randomised (AdaLN included, which our side zero-initialises) and
copied through the mapping tables of skyreels_jax.models.mappings.hunyuan, which check that
every source tensor is used and every target param filled. The V4-only layers (text
cross-attention, audio<->video cross-attention) are tested both absent and present: with
their zero-initialised output projections they must not change the result.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import torch
from diffusers.models.transformers import transformer_hunyuan_video as hv
from diffusers.models.embeddings import Timesteps  # noqa: E402
from diffusers.models.normalization import AdaLayerNormContinuous  # noqa: E402

from skyreels_jax.models.attention import AttentionSpec
from skyreels_jax.models.blocks import BlockSpec, DualStreamBlock, SingleStreamBlock  # noqa: E402
from skyreels_jax.models.layers import (ConditionEmbedding, masked_mean, patchify,  # noqa: E402
                                        timestep_sinusoid, unpatchify)
from skyreels_jax.models.mmdit import BranchIO, MMDiT, MMDiTConfig  # noqa: E402
from skyreels_jax.models.rope import (audio_positions, rope_cos_sin,  # noqa: E402
                                      video_positions)
from skyreels_jax.models.mappings import hunyuan as hm  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4
HEADS, HEAD_DIM = 2, 16
DIM = HEADS * HEAD_DIM
AXES = (4, 6, 6)
THETA = 256.0
GRID = (2, 3, 4)            # (t, h, w) token grid: 24 video tokens
TEXT_LENGTHS = (7, 4)       # batch of 2; the second prompt is padded at the end
TEXT_LEN = max(TEXT_LENGTHS)
TEXT_DIM = 24
CHANNELS = 4                # latent channels C (our input is 2C+1)


# ----------------------------------------------------------------------------- helpers

def randomise(module: "torch.nn.Module", seed: int) -> dict[str, np.ndarray]:
  """Re-draws every tensor of `module` (RMSNorm scales around 1) and returns them as numpy."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight",
                          "norm_added_k.weight")):
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def build(make, abstract: bool = False):
  """Our module; `abstract` (nnx.eval_shape) skips the random init when the loader fills
  every param."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(make) if abstract else make()


def tt(x) -> "torch.Tensor":
  return torch.from_numpy(np.array(x, np.float32))


def assert_close(ours, theirs, atol=ATOL, rtol=RTOL):
  ours = np.asarray(ours, np.float64)
  theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
  theirs = np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  err = np.abs(ours - theirs)
  worst = float(np.max(err - rtol * np.abs(theirs)))
  assert worst <= atol, f"max abs err {err.max():.3g} (scale {np.abs(theirs).max():.3g})"


def spec(mlp_ratio: float) -> BlockSpec:
  return BlockSpec(dim=DIM, num_heads=HEADS, mlp_ratio=mlp_ratio, attention=AttentionSpec(),
                   dtype=jnp.float32, param_dtype=jnp.float32)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  b, s = len(TEXT_LENGTHS), int(np.prod(GRID))
  text_mask = np.arange(TEXT_LEN)[None] < np.array(TEXT_LENGTHS)[:, None]
  kv_mask = np.concatenate([np.ones((b, s), bool), text_mask], axis=1)
  pos = video_positions(GRID)
  return dict(
      x=rng.standard_normal((b, s, DIM), np.float32),
      ctx=rng.standard_normal((b, TEXT_LEN, DIM), np.float32),
      temb=rng.standard_normal((b, DIM), np.float32),
      text_mask=text_mask, kv_mask=kv_mask,
      rope=rope_cos_sin(pos, AXES, THETA),
      # What the V4 layers read when present: a text context and an audio stream.
      text_ctx=rng.standard_normal((b, TEXT_LEN, DIM), np.float32),
      audio=rng.standard_normal((b, 10, DIM), np.float32),
      v_time_rope=rope_cos_sin(pos[:, :1], (HEAD_DIM,), 1e4),
      a_time_rope=rope_cos_sin(audio_positions(10, 0.4), (HEAD_DIM,), 1e4),
  )


def diffusers_rope():
  rope = hv.HunyuanVideoRotaryPosEmbed(patch_size=1, patch_size_t=1, rope_dim=list(AXES),
                                       theta=THETA)
  return rope(torch.zeros(1, 1, *GRID))


def diffusers_mask(kv_mask) -> "torch.Tensor":
  return torch.from_numpy(kv_mask)[:, None, None, :]


@nnx.jit(static_argnums=2)
def run_block(block, inp, with_v4: bool):
  """Our block as the joint layer runs it: attend [, A<->V cross], feed-forward."""
  x, ctx, mods = block.attend(inp["x"], inp["ctx"], inp["temb"], rope=inp["rope"],
                              x_mask=np.ones(inp["x"].shape[:2], bool),
                              text_ctx=inp["text_ctx"] if with_v4 else None,
                              text_mask=inp["text_mask"])
  if with_v4:
    x = block.cross(x, inp["audio"], other_mask=None, q_rope=inp["v_time_rope"],
                    k_rope=inp["a_time_rope"])
  return block.feed_forward(x, ctx, mods)


# ----------------------------------------------------------------------------- tests

def test_video_rope_matches_diffusers():
  cos, sin = diffusers_rope()
  ours = rope_cos_sin(video_positions(GRID), AXES, THETA)
  assert_close(ours[0], cos, atol=1e-6)
  assert_close(ours[1], sin, atol=1e-6)


# (mlp_ratio, with the V4 layers present at their zero init)
BLOCK_CASES = pytest.mark.parametrize("mlp_ratio,with_v4", [(2.0, False), (4.0, False),
                                                             (4.0, True)],
                                      ids=["mlp2", "mlp4", "mlp4_v4_layers_zero"])


# (diffusers block, our block, mapping table, seed)
BLOCK_KINDS = {
    "dual": (lambda r: hv.HunyuanVideoTransformerBlock(HEADS, HEAD_DIM, mlp_ratio=r),
             DualStreamBlock, hm.dual_block_entries, 1),
    "single": (lambda r: hv.HunyuanVideoSingleTransformerBlock(HEADS, HEAD_DIM, mlp_ratio=r),
               SingleStreamBlock, hm.single_block_entries, 2),
}


@BLOCK_CASES
@pytest.mark.parametrize("kind", sorted(BLOCK_KINDS))
def test_block_matches_diffusers(inputs, kind, mlp_ratio, with_v4):
  make_theirs, our_cls, entries_fn, seed = BLOCK_KINDS[kind]
  theirs = make_theirs(mlp_ratio)
  tensors = randomise(theirs, seed=seed)
  ours = build(lambda: our_cls(spec(mlp_ratio), nnx.Rngs(0), text_cross=with_v4,
                               av_cross=with_v4), abstract=not with_v4)
  entries = entries_fn()
  assert {e.source for e in entries} == set(tensors)
  hm.load_into(ours, tensors, entries)

  with torch.no_grad():
    ref_x, ref_ctx = theirs(tt(inputs["x"]), tt(inputs["ctx"]), tt(inputs["temb"]),
                            diffusers_mask(inputs["kv_mask"]), diffusers_rope())
  x, ctx = run_block(ours, inputs, with_v4)
  assert_close(x, ref_x)
  assert_close(ctx, ref_ctx)


def test_v4_layers_are_not_mapped_and_stay_zero(inputs):
  """The loader leaves text_cross/av_cross at init: their output projections are zero."""
  theirs = hv.HunyuanVideoTransformerBlock(HEADS, HEAD_DIM, mlp_ratio=4.0)
  ours = build(lambda: DualStreamBlock(spec(4.0), nnx.Rngs(0), text_cross=True,
                                       av_cross=True))
  hm.load_into(ours, randomise(theirs, seed=3), hm.dual_block_entries())
  for layer in (ours.text_cross, ours.av_cross):
    assert not np.any(np.asarray(layer.to_out.kernel[...]))
    assert not np.any(np.asarray(layer.to_out.bias[...]))


def test_load_into_rejects_unused_and_unfilled():
  theirs = hv.HunyuanVideoSingleTransformerBlock(HEADS, HEAD_DIM, mlp_ratio=2.0)
  tensors = randomise(theirs, seed=4)
  ours = build(lambda: SingleStreamBlock(spec(2.0), nnx.Rngs(0), text_cross=False,
                                         av_cross=False))
  entries = hm.single_block_entries()
  with pytest.raises(ValueError, match="not filled"):
    hm.load_into(ours, tensors, [e for e in entries if e.source != "proj_mlp.bias"],
                 skip_sources=("proj_mlp.bias",))
  with pytest.raises(ValueError, match="not mapped"):
    hm.load_into(ours, {**tensors, "extra.weight": np.zeros(3, np.float32)}, entries)


def test_timestep_sinusoid_matches_diffusers():
  t = np.array([0.0, 0.37, 17.0, 250.5, 999.0], np.float32)
  ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(tt(t))
  # Arguments reach ~1e3 rad: the float32 rounding of the frequencies shows up at ~1e-4.
  assert_close(timestep_sinusoid(jnp.asarray(t)), ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("guidance", [False, True])
def test_condition_embedding_matches_diffusers(guidance):
  """Timesteps(256, flip_sin_to_cos) + TimestepEmbedding + PixArtAlphaTextProjection(silu)
  (+ the guidance TimestepEmbedding)."""
  theirs = hv.HunyuanVideoConditionEmbedding(DIM, TEXT_DIM, guidance_embeds=guidance)
  tensors = randomise(theirs, seed=5)
  ours = build(lambda: ConditionEmbedding(DIM, TEXT_DIM, guidance=guidance, rngs=nnx.Rngs(0),
                                          dtype=jnp.float32, param_dtype=jnp.float32),
               abstract=True)
  hm.load_into(ours, tensors, hm.condition_embedding_entries(guidance=guidance))
  rng = np.random.default_rng(1)
  t = np.array([3.0, 0.25, 0.9], np.float32) * 1000 / 3
  pooled = rng.standard_normal((3, TEXT_DIM)).astype(np.float32)
  g = np.array([6.0, 1.0, 3.5], np.float32) * 1000 if guidance else None
  with torch.no_grad():
    ref, _ = theirs(tt(t), tt(pooled), None if g is None else tt(g))
  got = ours(jnp.asarray(t), jnp.asarray(pooled), None if g is None else jnp.asarray(g))
  assert_close(got, ref, atol=1e-4)


def _io_config(**kw) -> MMDiTConfig:
  base = dict(width=DIM, num_heads=HEADS, mlp_ratio=4.0, num_dual_blocks=1,
              num_single_blocks=1, video_latent_channels=CHANNELS, audio_latent_channels=3,
              text_dim=TEXT_DIM, rope_axes_dim=AXES, rope_theta=THETA, use_audio=False,
              text_cross_attention=False)
  return MMDiTConfig(**{**base, **kw})


def test_output_head_matches_diffusers():
  """BranchIO.head = AdaLayerNormContinuous(elementwise_affine=False, eps=1e-6) + Linear."""
  cfg = _io_config()
  out = CHANNELS * 4
  norm = AdaLayerNormContinuous(DIM, DIM, elementwise_affine=False, eps=1e-6)
  proj = torch.nn.Linear(DIM, out)
  tensors = {**{f"norm_out.{k}": v for k, v in randomise(norm, 6).items()},
             **{f"proj_out.{k}": v for k, v in randomise(proj, 7).items()}}
  io = build(lambda: BranchIO(cfg, 9, out, nnx.Rngs(0)))
  entries = [e for e in hm.branch_io_entries(guidance=False)
             if e.target[0] in ("norm_out", "proj_out")]
  hm.load_into(io, tensors, entries, skip_targets=("x_embedder", "context_embedder",
                                                   "time_text_embed"))
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 24, DIM)).astype(np.float32)
  temb = rng.standard_normal((2, DIM)).astype(np.float32)
  with torch.no_grad():
    ref = proj(norm(tt(x), tt(temb)))
  assert_close(io.head(jnp.asarray(x), jnp.asarray(temb)), ref)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2)])
def test_patch_embed_matches_diffusers(patch):
  """patchify + x_embedder = HunyuanVideoPatchEmbed (Conv3d, kernel = stride = patch)."""
  cin = 2 * CHANNELS + 1
  theirs = hv.HunyuanVideoPatchEmbed(patch, cin, DIM)
  tensors = {f"x_embedder.{k}": v for k, v in randomise(theirs, 8).items()}
  io = build(lambda: BranchIO(_io_config(), cin * int(np.prod(patch)), 4, nnx.Rngs(0)))
  hm.load_into(io, tensors, [e for e in hm.branch_io_entries(guidance=False)
                             if e.target[0] == "x_embedder"],
               skip_targets=("context_embedder", "time_text_embed", "norm_out", "proj_out"))
  video = np.random.default_rng(3).standard_normal((2, 4, 6, 8, cin)).astype(np.float32)
  with torch.no_grad():
    ref = theirs(tt(video.transpose(0, 4, 1, 2, 3)))
  assert_close(io.x_embedder(patchify(jnp.asarray(video), patch)), ref)


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2)])
def test_unpatchify_matches_diffusers(patch):
  """The reshape/permute at the end of HunyuanVideoTransformer3DModel.forward."""
  (p_t, p, _), (t, h, w), c = patch, (4, 6, 8), 3
  tokens = np.random.default_rng(4).standard_normal(
      (2, (t // p_t) * (h // p) * (w // p), c * p_t * p * p)).astype(np.float32)
  ref = tt(tokens).reshape(2, t // p_t, h // p, w // p, -1, p_t, p, p)
  ref = ref.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
  got = unpatchify(jnp.asarray(tokens), (t, h, w), patch, c)          # (B, T, H, W, C)
  np.testing.assert_array_equal(np.asarray(got).transpose(0, 4, 1, 2, 3), ref.numpy())


def _model_inputs(seed: int):
  """(video 2C+1 channels, text, text mask with a padded prompt, timesteps) of a batch of 2."""
  rng = np.random.default_rng(seed)
  b = len(TEXT_LENGTHS)
  video = rng.standard_normal((b, 2, 6, 8, 2 * CHANNELS + 1)).astype(np.float32)
  text = rng.standard_normal((b, TEXT_LEN, TEXT_DIM)).astype(np.float32)
  text_mask = np.arange(TEXT_LEN)[None] < np.array(TEXT_LENGTHS)[:, None]
  return video, text, text_mask, np.array([10.0, 870.0], np.float32)


def test_video_branch_matches_full_model():
  """The whole video-only MMDiT (scanned blocks) vs HunyuanVideoTransformer3DModel with no
  token refiner (num_refiner_layers=0, so its context_embedder is proj_in) and 2C+1 input
  channels, through `video_branch_entries`."""
  cfg = _io_config(num_dual_blocks=2, num_single_blocks=2)
  theirs = hv.HunyuanVideoTransformer3DModel(
      in_channels=2 * CHANNELS + 1, out_channels=CHANNELS, num_attention_heads=HEADS,
      attention_head_dim=HEAD_DIM, num_layers=2, num_single_layers=2, num_refiner_layers=0,
      mlp_ratio=4.0, patch_size=2, patch_size_t=1, guidance_embeds=False,
      text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, rope_theta=THETA,
      rope_axes_dim=AXES)
  tensors = randomise(theirs, seed=9)
  ours = build(lambda: MMDiT(cfg, rngs=nnx.Rngs(0)), abstract=True)
  entries = hm.video_branch_entries(2, 2, guidance=False)
  unmapped = {s for s in tensors if s.startswith(hm.UNMAPPED_SOURCE_PREFIXES)}
  assert {e.source for e in entries} == set(tensors) - unmapped
  assert all(s.startswith("context_embedder.time_text_embed.") for s in unmapped)
  hm.load_into(ours, tensors, entries)

  video, text, text_mask, t = _model_inputs(5)
  pooled = masked_mean(jnp.asarray(text), jnp.asarray(text_mask))
  with torch.no_grad():
    ref = theirs(tt(video.transpose(0, 4, 1, 2, 3)), tt(t), tt(text),
                 torch.from_numpy(text_mask.astype(np.int64)), tt(pooled)).sample
  got, _ = nnx.jit(lambda m, *a: m(video=a[0], video_timestep=a[1], text=a[2], text_mask=a[3]))(
      ours, video, t, text, text_mask)
  assert_close(np.asarray(got).transpose(0, 4, 1, 2, 3), ref, atol=1e-4)


def _published_layout(refiner_layers: int, guidance: bool, seed: int):
  """A tiny HunyuanVideoTransformer3DModel laid out like the release (token refiner, guidance
  embedding, 2C+1 input channels) and our video-only MMDiT loaded from it."""
  theirs = hv.HunyuanVideoTransformer3DModel(
      in_channels=2 * CHANNELS + 1, out_channels=CHANNELS, num_attention_heads=HEADS,
      attention_head_dim=HEAD_DIM, num_layers=2, num_single_layers=2,
      num_refiner_layers=refiner_layers, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
      guidance_embeds=guidance, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
      rope_theta=THETA, rope_axes_dim=AXES)
  tensors = randomise(theirs, seed=seed)
  cfg = _io_config(num_dual_blocks=2, num_single_blocks=2, guidance_embed=guidance,
                   text_refiner_layers=refiner_layers)
  ours = build(lambda: MMDiT(cfg, rngs=nnx.Rngs(0)), abstract=True)
  entries = hm.video_branch_entries(2, 2, guidance=guidance, refiner_layers=refiner_layers)
  assert {e.source for e in entries} == set(tensors)      # every tensor, the refiner's too
  hm.load_into(ours, tensors, entries)
  return theirs, ours


def test_token_refiner_and_guidance_embedding_match_diffusers():
  """2 refiner layers and the guidance embedding: our video-only output equals diffusers'
  (padded prompts included: the refiner's mask lets padded tokens see the first one)."""
  theirs, ours = _published_layout(refiner_layers=2, guidance=True, seed=11)
  video, text, text_mask, t = _model_inputs(6)
  g = np.array([6000.0, 3500.0], np.float32)      # guidance x 1000, as the pipeline passes it
  pooled = masked_mean(jnp.asarray(text), jnp.asarray(text_mask))
  with torch.no_grad():
    ref = theirs(tt(video.transpose(0, 4, 1, 2, 3)), tt(t), tt(text),
                 torch.from_numpy(text_mask.astype(np.int64)), tt(pooled),
                 guidance=tt(g)).sample
  got, _ = nnx.jit(lambda m, *a: m(video=a[0], video_timestep=a[1], text=a[2], text_mask=a[3],
                                   guidance=a[4]))(ours, video, t, text, text_mask, g)
  # ~2e-5 relative: 7.6e-5 absolute at a scale of 3.7 on one CPU kind (5e-5 on another)
  assert_close(np.asarray(got).transpose(0, 4, 1, 2, 3), ref, atol=1e-4)
  # The refiner is in the path: without it the output differs.
  plain = nnx.jit(lambda m, *a: m.video_io.context_embedder(a[0]))(ours, text)
  refined = nnx.jit(lambda m, *a: m.video_io.text_context(*a))(ours, text, text_mask, t)
  assert float(jnp.abs(refined - plain).max()) > 1e-3
