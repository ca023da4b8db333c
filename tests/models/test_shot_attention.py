"""Shot-aware text cross-attention (model.shot_attention): a video token of shot k gives zero
weight to the text tokens of every other shot, and the same output under sequence
parallelism; latent frames get the shot their time falls in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skyreels_jax.models.attention import AttentionSpec
from skyreels_jax.models.blocks import (BlockSpec, CrossAttention, DualStreamBlock,
                                        SingleStreamBlock)
from skyreels_jax.models.rope import rope_cos_sin
from skyreels_jax.tasks import shots as shots_lib

B, SQ, L, DIM, HEADS = 2, 12, 10, 32, 4
AXES = ("data", "fsdp", "sequence", "tensor")
# text tokens: 0 global (template, caption), 1 / 2 the two shots' tags, padding at the end
K_SHOT = np.array([[0, 0, 1, 1, 1, 2, 2, 2, 0, 0], [0, 1, 1, 2, 2, 2, 0, 0, 0, 0]], np.int32)
K_MASK = np.array([[1] * 8 + [0] * 2, [1] * 6 + [0] * 4], bool)
Q_SHOT = np.array([[1] * 5 + [2] * 5 + [0] * 2, [0] * 2 + [1] * 4 + [2] * 6], np.int32)


def _module(impl="dot_product"):
  spec = BlockSpec(dim=DIM, num_heads=HEADS, mlp_ratio=2.0,
                   attention=AttentionSpec(impl, ("data", "fsdp"), "sequence", "tensor"),
                   dtype=jnp.float32, param_dtype=jnp.float32)
  with nnx.use_eager_sharding(False):    # plain arrays: the test places nothing
    module = CrossAttention(spec, nnx.Rngs(0))
  # the output projection starts at zero (a pretrained block's identity): give it weights
  module.to_out.kernel[...] = jax.random.normal(jax.random.key(1), (DIM, DIM)) * 0.1
  return module


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(B, SQ, DIM)), jnp.float32),
          jnp.asarray(rng.normal(size=(B, L, DIM)), jnp.float32))


def _run(module, x, ctx):
  return module(x, ctx, kv_mask=jnp.asarray(K_MASK), ctx_is_text=True,
                shots=(jnp.asarray(Q_SHOT), jnp.asarray(K_SHOT), 2))


def test_each_query_reads_only_its_shot_and_the_global_text(inputs):
  """Against one query at a time with its own key mask (queries are independent)."""
  module = _module()
  x, ctx = inputs
  out = _run(module, x, ctx)
  for b in range(B):
    for i in range(SQ):
      k = Q_SHOT[b, i]
      allowed = K_MASK[b] & ((K_SHOT[b] == 0) | (K_SHOT[b] == k) | (k == 0))
      one = module(x[b:b + 1, i:i + 1], ctx[b:b + 1], kv_mask=jnp.asarray(allowed)[None],
                   ctx_is_text=True)
      np.testing.assert_allclose(out[b, i], one[0, 0], rtol=1e-5, atol=1e-5)


def test_other_shots_text_gets_zero_weight(inputs):
  """Changing shot 2's text tokens leaves every shot-1 token's output exactly as it was,
  and changes the shot-2 and no-shot tokens."""
  module = _module()
  x, ctx = inputs
  out = _run(module, x, ctx)
  noise = jnp.asarray(np.random.default_rng(1).normal(size=ctx.shape), jnp.float32)
  moved = _run(module, x, jnp.where(jnp.asarray(K_SHOT == 2)[..., None], ctx + noise, ctx))
  delta = np.abs(np.asarray(moved - out)).max(axis=-1)
  assert np.all(delta[Q_SHOT == 1] == 0.0)
  assert np.all(delta[Q_SHOT == 2] > 1e-4) and np.all(delta[Q_SHOT == 0] > 1e-4)
  # without shots every query reads every shot
  plain = module(x, ctx, kv_mask=jnp.asarray(K_MASK), ctx_is_text=True)
  assert np.abs(np.asarray(plain - out)).max() > 1e-3


@pytest.mark.parametrize("block_cls", [DualStreamBlock, SingleStreamBlock])
def test_a_blocks_video_of_one_shot_never_reads_another_shots_caption(inputs, block_cls):
  """A whole block: its joint self-attention reads only the global text (a key mask), the
  shot-aware cross-attention adds the frame's own shot. Changing shot 2's caption (the text
  stream and the cross-attention's context alike) leaves the shot-1 tokens exactly as they
  were; the shot-2 tokens move. Without shots every token moves."""
  x, ctx = inputs
  with nnx.use_eager_sharding(False):
    block = block_cls(_module().spec, nnx.Rngs(2), text_cross=True, av_cross=False)
  # every weight random: AdaLN-Zero gates and the new layers' outputs start at zero
  graphdef, state = nnx.split(block)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  block = nnx.merge(graphdef, jax.tree.unflatten(
      tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
  rope = rope_cos_sin(np.stack([np.arange(SQ)] * 3, -1), (2, 2, 4), 256.0)
  temb = jnp.ones((B, DIM))
  shots = (jnp.asarray(Q_SHOT), jnp.asarray(K_SHOT), 2)

  def video(c, with_shots=True):
    out, _, _ = block.attend(x, c, temb, rope=rope, x_mask=jnp.ones((B, SQ), bool),
                             text_ctx=c, text_mask=jnp.asarray(K_MASK),
                             shots=shots if with_shots else None)
    return np.asarray(out)

  noise = jnp.asarray(np.random.default_rng(4).normal(size=ctx.shape), jnp.float32)
  moved_ctx = jnp.where(jnp.asarray(K_SHOT == 2)[..., None], ctx + noise, ctx)
  delta = np.abs(video(moved_ctx) - video(ctx)).max(axis=-1)
  assert np.all(delta[Q_SHOT == 1] == 0.0)
  assert np.all(delta[Q_SHOT == 2] > 1e-4)
  plain = np.abs(video(moved_ctx, False) - video(ctx, False)).max(axis=-1)
  assert np.all(plain > 1e-4)


@pytest.mark.parametrize("impl,mesh_shape", [("ulysses", (1, 2, 2, 2)),
                                             ("ring", (1, 1, 4, 2))])
def test_sequence_parallel_equals_plain(inputs, impl, mesh_shape):
  x, ctx = inputs
  expected = _run(_module(), x, ctx)
  mesh = jax.make_mesh(mesh_shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  module = _module(impl)
  with jax.set_mesh(mesh):
    out = jax.jit(lambda x, c: _run(module, x, c))(x, ctx)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_latent_frames_take_the_shot_of_their_middle_pixel_frame():
  spans = jnp.asarray([[[0.0, 1.0], [1.0, 2.0], [-1.0, -1.0]]])     # 2 shots of 1 s
  # causal 4x VAE, 17 frames at 8 fps: latent 0 = frame 0, latent f = frames 4f-3 .. 4f
  assert shots_lib.latent_frame_centres(17, 5, 4).tolist() == [0, 2.5, 6.5, 10.5, 14.5]
  np.testing.assert_array_equal(shots_lib.video_shots(spans, 17, 5, 4, 8.0), [[1, 1, 1, 2, 2]])
  # identity codec, 2x temporal, 16 frames: latent f = frames 2f, 2f+1
  np.testing.assert_array_equal(shots_lib.video_shots(spans, 16, 8, 2, 8.0),
                                [[1, 1, 1, 1, 2, 2, 2, 2]])
  with pytest.raises(ValueError, match="do not make"):
    shots_lib.latent_frame_centres(16, 5, 4)
