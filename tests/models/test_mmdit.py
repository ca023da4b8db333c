"""The dual-stream MMDiT (skyreels_jax/models/mmdit.py, blocks.py, remat.py).

One small joint model is built per module (width 32, 2 heads, 1 dual + 1 single block,
temporal patch 2); every test reuses it with different parameter values through one jitted
forward, so the module compiles a handful of programs only.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skyreels_jax.models.mmdit import MMDiT, MMDiTConfig

CFG = MMDiTConfig(
    width=32, num_heads=2, mlp_ratio=2.0, num_dual_blocks=1, num_single_blocks=1,
    video_latent_channels=4, audio_latent_channels=3, text_dim=8, patch_size=1,
    patch_size_t=2, audio_patch_size=1, rope_axes_dim=(4, 6, 6), audio_time_scale=0.5)
B, T, H, W = 2, 4, 2, 2          # latent grid; tokens (T/2) * H * W = 8 per example
TA, L = 4, 3                      # audio latents, text tokens
NEW_LAYER_OUTPUTS = ("/text_cross/to_out/", "/av_cross/to_out/")
# These programs are tiny: XLA's backend optimisations cost 3-5x more compile time than they


def path_str(path) -> str:
  return "/" + "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)) + "/"


def update(state, fn):
  """fn(path '/a/b/kernel/', array) -> array, over every parameter."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), state)


def randomize(state, seed, where=lambda p: True):
  """Random values (kernels ~ 1/sqrt(fan_in), biases ~ 0.1, norm scales ~ 1) at `where`."""
  rng = np.random.default_rng(seed)

  def fill(p, x):
    if not where(p):
      return x
    z = rng.normal(size=x.shape).astype(np.float32)
    if p.endswith("/kernel/"):
      z = z / np.sqrt(x.shape[-2])
    elif p.endswith("/scale/"):
      z = 1.0 + 0.1 * z
    else:
      z = 0.1 * z
    return z
  return update(state, fill)


def flatten(state) -> dict:
  flat = {}
  jax.tree_util.tree_map_with_path(lambda p, x: flat.__setitem__(path_str(p), x), state)
  return flat


def zero_at(state, *fragments):
  return update(state, lambda p, x: np.zeros_like(x) if all(f in p for f in fragments) else x)


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, state, inputs):
  return nnx.merge(graphdef, state)(**inputs)


@functools.partial(jax.jit, static_argnums=(0, 3))
def forward_keyframes(graphdef, state, inputs, times):
  return nnx.merge(graphdef, state)(**inputs, keyframe_times=times)


def graphdef_of(cfg):
  with nnx.use_eager_sharding(False):
    return nnx.split(nnx.eval_shape(lambda: MMDiT(cfg, rngs=nnx.Rngs(0))))


def is_new_layer_output(path: str) -> bool:
  return any(f in path for f in NEW_LAYER_OUTPUTS)


@pytest.fixture(scope="module")
def abstract():
  """(graphdef, abstract state) of the joint model."""
  return graphdef_of(CFG)


@pytest.fixture(scope="module")
def graphdef(abstract):
  return abstract[0]


@pytest.fixture(scope="module")
def params(abstract):
  """Every parameter random: a stand-in for a trained model."""
  return randomize(abstract[1], seed=1)


@pytest.fixture(scope="module")
def fresh_new_layer_outputs():
  """The freshly initialised values of the new layers' output projections. (Returning only
  these lets XLA drop every other initialiser: a much smaller program to compile.)"""
  def init():
    with nnx.use_eager_sharding(False):
      state = nnx.split(MMDiT(CFG, rngs=nnx.Rngs(0)))[1]
    return {p: x for p, x in flatten(state).items() if is_new_layer_output(p)}
  return jax.jit(init)()


def normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def make_inputs(seed=0):
  """Numpy inputs (no eager JAX ops: each would compile)."""
  return dict(
      video=normal(seed, (B, T, H, W, 2 * 4 + 1)),
      video_timestep=np.array([250.0, 700.0], np.float32),
      audio=normal(seed + 1, (B, TA, 2 * 3 + 1)),
      audio_timestep=np.array([250.0, 700.0], np.float32),
      text=normal(seed + 2, (B, L, 8)),
      text_mask=np.array([[True, True, False], [True, False, False]]))


def with_refs(inputs, video_valid, audio_valid, seed=5):
  return dict(inputs, video_refs=normal(seed, (B, 2, H, W, 9)),
              video_ref_valid=np.asarray(video_valid),
              audio_refs=normal(seed + 1, (B, 2, 7)), audio_ref_valid=np.asarray(audio_valid))


def max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def mean_abs(a):
  return float(np.abs(np.asarray(a)).mean())


def test_new_layers_are_zero_initialised_and_keep_video_independent_of_audio(
    abstract, fresh_new_layer_outputs):
  graphdef, state = abstract
  fresh = fresh_new_layer_outputs
  # text_cross (video, 2 block types) + av_cross (2 branches, 2 block types), kernel + bias.
  assert len(fresh) == 2 * 2 + 2 * 2 * 2
  for p, x in fresh.items():
    assert x.shape == flatten(state)[p].shape
    np.testing.assert_array_equal(x, 0.0)

  # A "pretrained" video branch: a fresh model with every parameter random except the new
  # layers' output projections, which keep their initial values.
  pretrained = randomize(state, seed=2, where=lambda p: not is_new_layer_output(p))
  pretrained = update(pretrained, lambda p, x: fresh[p] if is_new_layer_output(p) else x)
  x = make_inputs()
  v1, a1 = forward(graphdef, pretrained, x)
  v2, a2 = forward(graphdef, pretrained, dict(x, audio=x["audio"] * -3.0 + 1.0))
  assert max_diff(a1, a2) > 1e-2                     # the audio input does matter...
  np.testing.assert_array_equal(np.asarray(v1), np.asarray(v2))  # ...but not to the video
  assert mean_abs(v1) > 1e-2
  # The new layers' other weights are inert too: the video output is the pretrained one.
  other = randomize(pretrained, seed=3, where=lambda p: ("/text_cross/" in p or "/av_cross/" in p)
                    and not is_new_layer_output(p))
  v3, _ = forward(graphdef, other, x)
  np.testing.assert_array_equal(np.asarray(v3), np.asarray(v1))

  # Once the video branch's A->V output projection is trained, audio reaches the video.
  trained = randomize(pretrained, seed=4, where=lambda p: p.startswith(
      ("/dual_layers/video/av_cross/to_out/", "/single_layers/video/av_cross/to_out/")))
  v1, _ = forward(graphdef, trained, x)
  v2, _ = forward(graphdef, trained, dict(x, audio=x["audio"] * -3.0 + 1.0))
  assert max_diff(v1, v2) > 1e-3


def test_video_attends_to_the_updated_audio(graphdef, params):
  """a' = a + X(Q=a, KV=v'), then v'' = v' + X(Q=v', KV=a') within one layer.

  The single layer's A<->V exchange is switched off, so the only path between the streams
  is the dual layer's. The video output then depends on the AUDIO branch's av_cross of that
  layer only if the video attends to the updated audio a'; and the audio output must not
  depend on the VIDEO branch's av_cross (audio attended to v' before v was updated)."""
  x = make_inputs()
  base = zero_at(params, "/single_layers/", "/av_cross/to_out/")
  audio_w = "/dual_layers/audio/av_cross/to_out/"
  video_w = "/dual_layers/video/av_cross/to_out/"
  changed_audio_w = randomize(base, seed=11, where=lambda p: p.startswith(audio_w))
  changed_video_w = randomize(base, seed=12, where=lambda p: p.startswith(video_w))
  v0, a0 = forward(graphdef, base, x)
  v1, a1 = forward(graphdef, changed_audio_w, x)
  v2, a2 = forward(graphdef, changed_video_w, x)
  assert max_diff(a0, a1) > 1e-3
  assert max_diff(v0, v1) > 1e-3                  # video saw the updated audio a'
  assert max_diff(v0, v2) > 1e-3
  np.testing.assert_array_equal(np.asarray(a2), np.asarray(a0))  # audio saw v', not v''
  # Control: without the video's A->V projection, the audio branch's cross weights are
  # invisible to the video (so the dependence above goes through v'' = v' + X(v', a')).
  no_av = zero_at(base, video_w)
  v3, _ = forward(graphdef, no_av, x)
  v4, _ = forward(graphdef, zero_at(changed_audio_w, video_w), x)
  np.testing.assert_array_equal(np.asarray(v3), np.asarray(v4))


def test_references_act_only_through_attention_and_padded_slots_are_inert(graphdef, params):
  x = make_inputs()
  v0, a0 = forward(graphdef, params, x)
  # All reference slots padded == no references at all (target outputs only).
  v1, a1 = forward(graphdef, params, with_refs(x, [[False] * 2] * 2, [[False] * 2] * 2))
  assert v1.shape == v0.shape == (B, T, H, W, 4) and a1.shape == a0.shape == (B, TA, 3)
  np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a1, a0, rtol=1e-5, atol=1e-5)
  # Example 0 has valid references, example 1 padded ones: only example 0 changes.
  valid = [[True, True], [False, False]]
  v2, a2 = forward(graphdef, params, with_refs(x, valid, valid))
  assert max_diff(v2[0], v0[0]) > 1e-3 and max_diff(a2[0], a0[0]) > 1e-3
  np.testing.assert_allclose(v2[1], v0[1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a2[1], a0[1], rtol=1e-5, atol=1e-5)
  # The content of the valid references matters (through attention), the padded ones' not.
  v3, a3 = forward(graphdef, params, with_refs(x, valid, valid, seed=6))
  assert max_diff(v3[0], v2[0]) > 1e-3 and max_diff(a3[0], a2[0]) > 1e-3
  np.testing.assert_allclose(v3[1], v2[1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a3[1], a2[1], rtol=1e-5, atol=1e-5)


def test_padded_text_tokens_do_not_matter(graphdef, params):
  x = make_inputs()
  v0, a0 = forward(graphdef, params, x)
  padded = ~x["text_mask"]
  noise = normal(9, x["text"].shape) * 5.0
  v1, a1 = forward(graphdef, params, dict(x, text=np.where(padded[..., None], noise, x["text"])))
  np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a1, a0, rtol=1e-5, atol=1e-6)
  # A valid token does matter (the test can fail).
  v2, a2 = forward(graphdef, params, dict(x, text=x["text"] + np.array([1.0, 0, 0])[:, None]))
  assert max_diff(v2, v0) > 1e-3 and max_diff(a2, a0) > 1e-3


def test_scanned_and_unrolled_blocks_agree(graphdef, params):
  x = make_inputs()
  unrolled, _ = graphdef_of(dataclasses.replace(CFG, scan_blocks=False))
  v0, a0 = forward(graphdef, params, x)
  v1, a1 = forward(unrolled, params, x)
  np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a1, a0, rtol=1e-5, atol=1e-5)
  assert mean_abs(v0) > 1e-2 and mean_abs(a0) > 1e-2


@pytest.fixture(scope="module")
def video_only(params):
  """The video-only model with the joint model's video-branch weights."""
  cfg = dataclasses.replace(CFG, use_audio=False)
  gd, abstract = graphdef_of(cfg)
  flat = flatten(params)
  return cfg, gd, update(abstract, lambda p, _: flat[p])


def video_inputs():
  x = make_inputs()
  del x["audio"], x["audio_timestep"]
  return x


def test_video_only_model_is_the_video_branch(graphdef, params, video_only):
  _, gd, state = video_only
  v, a = forward(gd, state, video_inputs())
  assert a is None
  # Same as the joint model's video output once audio cannot reach the video.
  v_joint, _ = forward(graphdef, zero_at(params, "/video/av_cross/to_out/"), make_inputs())
  np.testing.assert_allclose(v, v_joint, rtol=1e-5, atol=1e-5)
  assert mean_abs(v) > 1e-2
  with pytest.raises(ValueError, match="use_audio"):
    forward(gd, state, make_inputs())


def remat_grads(video_only, remat):
  """Parameter gradients of the video-only model under a remat policy."""
  cfg, _, state = video_only
  gd, _ = graphdef_of(dataclasses.replace(cfg, remat=remat))
  x = video_inputs()
  w = normal(3, (B, T, H, W, 4))

  def loss(state):
    v, _ = nnx.merge(gd, state)(**x)
    return jnp.sum(v * w)
  return flatten(jax.jit(jax.grad(loss))(state))


@pytest.fixture(scope="module")
def no_remat_grads(video_only):
  return remat_grads(video_only, "none")


# offload_named also runs on CPU (it moves nothing useful there); left out to save a compile.
@pytest.mark.parametrize("policy", ["full", "save_dots", "save_named"])
def test_remat_policies_give_the_same_gradients(video_only, no_remat_grads, policy):
  ref, got = no_remat_grads, remat_grads(video_only, policy)
  assert ref.keys() == got.keys() and len(ref) > 50
  for p, r in ref.items():
    np.testing.assert_allclose(got[p], r, rtol=1e-4, atol=1e-5, err_msg=p)
  # Almost every parameter gets a non-zero gradient (a non-trivial comparison).
  assert sum(float(np.abs(r).sum()) > 0 for r in ref.values()) > 0.9 * len(ref)


def test_vsa_over_the_video_grid_equals_dense_with_all_cubes(graphdef, params):
  """attention='vsa' reaches the video self-attention with this input's token grid: with
  every key cube kept it is the dense model (references included); keeping one of the two
  cubes changes the video output."""
  from skyreels_jax.models.attention import AttentionSpec
  inputs = with_refs(make_inputs(), [[True, False], [True, True]], [[True, True]] * 2)
  dense = forward(graphdef, params, inputs)
  outs = {}
  for k in (0, 2, 1):
    spec = AttentionSpec(impl="vsa", vsa_cube=(1, 2, 2), vsa_top_k=k)
    g, _ = graphdef_of(dataclasses.replace(CFG, attention=spec))
    outs[k] = forward(g, params, inputs)
  for k in (0, 2):
    assert max_diff(outs[k][0], dense[0]) < 1e-5 and max_diff(outs[k][1], dense[1]) < 1e-5
  assert max_diff(outs[1][0], dense[0]) > 1e-3


def test_keyframe_tokens_are_video_tokens_at_their_time_and_scaled_positions():
  """A keyframe is one more video frame's tokens at its time, its high-res grid scaled onto
  the low-res one: given the content of low-res frame t0 at the low resolution it is
  indistinguishable from that frame (same input, same positions: same output, exactly as
  attention is permutation-equivariant); at 2x its positions are the grid / 2; and the
  low-res video attends to it."""
  from skyreels_jax.models.rope import keyframe_positions
  cfg = dataclasses.replace(CFG, patch_size_t=1)
  g, state = graphdef_of(cfg)
  state = randomize(state, seed=3)
  inputs = make_inputs()
  t0 = 2
  plain = forward(g, state, inputs)
  out = forward_keyframes(g, state, dict(inputs, keyframes=inputs["video"][:, t0:t0 + 1]),
                          (t0,))
  assert out[2].shape == (B, 1, H, W, 4)
  assert max_diff(out[2][:, 0], out[0][:, t0]) < 1e-5
  assert max_diff(out[0], plain[0]) > 1e-3          # the video attends to the keyframe
  hi = normal(9, (B, 2, 2 * H, 2 * W, 9))
  out = forward_keyframes(g, state, dict(inputs, keyframes=hi), (0, 3))
  assert out[0].shape == (B, T, H, W, 4) and out[2].shape == (B, 2, 2 * H, 2 * W, 4)
  # Traced times (the refiner's random training keyframes) give what static ones give.
  traced = jax.jit(lambda times: nnx.merge(g, state)(**inputs, keyframes=hi,
                                                    keyframe_times=times))(
                                                        jnp.asarray([0.0, 3.0]))
  assert max_diff(traced[0], out[0]) < 1e-5 and max_diff(traced[2], out[2]) < 1e-5
  pos = np.asarray(keyframe_positions((0, 3), (4, 4), (2, 2)))
  assert pos.shape == (32, 3) and sorted(set(pos[:, 0])) == [0.0, 3.0]
  np.testing.assert_array_equal(np.unique(pos[:, 1]), [0.0, 0.5, 1.0, 1.5])
  with pytest.raises(ValueError, match="patch_size_t=1"):
    forward_keyframes(graphdef_of(CFG)[0], randomize(graphdef_of(CFG)[1], 1),
                      dict(inputs, keyframes=hi[:, :1]), (0,))
