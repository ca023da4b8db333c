"""The Wan-2.1 VAE port against diffusers' `AutoencoderKLWan` (float32, CPU), on a tiny random
config with the real compression (4x time, 8x8 space): encode (normalised posterior mean),
decode, chunked vs one-pass runs, spatial tiling (`enable_tiling`), the strict loader and a
save_pretrained round trip."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx

from skyreels_jax.models import encoders
from skyreels_jax.models.autoencoders.wan_vae import WanVAE, WanVideoAutoencoder
from skyreels_jax.models.mappings import wan_vae as wm

RTOL = 1e-4
BF16_RMS = 4e-2      # relative RMS error of bf16 against the float32 reference
TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.3, -0.2, 0.5, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
FRAMES, SIZE = 9, (16, 24)   # 9 = 1 + 4*2 frames -> 3 latent frames of 2x3


@pytest.fixture(scope="module")
def torch_vae():
  torch.manual_seed(0)
  model = AutoencoderKLWan(**TINY).eval()
  with torch.no_grad():   # every tensor away from its init (RMS gammas of 1, zero biases)
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  return model


@pytest.fixture(scope="module")
def state_dict(torch_vae):
  return {k: v.detach().numpy().copy() for k, v in torch_vae.state_dict().items()}


@pytest.fixture(scope="module")
def ours(torch_vae, state_dict):
  vae = WanVAE(wm.config_from_diffusers(dict(torch_vae.config)), rngs=nnx.Rngs(0))
  wm.load_into_vae(vae, state_dict)
  return WanVideoAutoencoder(vae)


@pytest.fixture(scope="module")
def video():
  return np.random.default_rng(0).uniform(-1, 1, (2, FRAMES, *SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def latents():
  return np.random.default_rng(1).normal(size=(2, 3, 2, 3, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def jitted(ours):
  """Wrapper calls inside jit, with the params as jit arguments (one compile per function:
  the round-trip test reuses them with other params of the same structure)."""
  return (jax.jit(lambda p, x: ours.encode(x, params=p)),
          jax.jit(lambda p, z: ours.decode(z, params=p)))


def _stats():
  return np.array(TINY["latents_mean"]), np.array(TINY["latents_std"])


def _close(got, want):
  err = np.abs(np.asarray(got) - want).max()
  assert err <= RTOL * np.abs(want).max(), (err, np.abs(want).max())
  return err


def _to_torch(x):   # (B, F, H, W, C) -> (B, C, F, H, W)
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _from_torch(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def test_encode_matches_diffusers(torch_vae, ours, jitted, video):
  with torch.no_grad():
    raw = _from_torch(torch_vae.encode(_to_torch(video)).latent_dist.mean)
  mean, std = _stats()
  got = jitted[0](ours.params, video)
  assert got.shape == (2, 3, 2, 3, 4)
  _close(got, (raw - mean) / std)   # ours returns normalised latents


def test_decode_matches_diffusers(torch_vae, ours, jitted, latents):
  mean, std = _stats()
  with torch.no_grad():
    want = _from_torch(torch_vae.decode(_to_torch((latents * std + mean).astype(np.float32)))
                       .sample)
  assert 0.01 < np.mean(np.abs(want) < 1), "the reference is all clipped: nothing tested"
  got = jitted[1](ours.params, latents)
  assert got.shape == (2, FRAMES, *SIZE, 3)
  _close(got, want)


def test_bf16_matches_diffusers_at_the_stated_tolerance(torch_vae, ours, video, latents):
  """video_ae.dtype=bfloat16: bf16 weights and compute, float32 in and out. Against the
  float32 diffusers reference: relative RMS error <= BF16_RMS (measured: 1.5e-2 encode, 2.8e-2 decode), and above 1e-3 (bf16 really ran)."""
  half = WanVideoAutoencoder(ours.module(), dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
  mean, std = _stats()
  with torch.no_grad():
    enc = (_from_torch(torch_vae.encode(_to_torch(video)).latent_dist.mean) - mean) / std
    dec = _from_torch(torch_vae.decode(_to_torch((latents * std + mean).astype(np.float32)))
                      .sample)
  got_enc = jax.jit(lambda p, x: half.encode(x, params=p))(half.params, video)
  got_dec = jax.jit(lambda p, z: half.decode(z, params=p))(half.params, latents)
  assert got_enc.dtype == got_dec.dtype == jnp.float32
  for got, want in ((got_enc, enc), (got_dec, np.clip(dec, -1, 1))):
    err = np.sqrt(np.mean((np.asarray(got) - want) ** 2) / np.mean(want ** 2))
    assert 1e-3 < err <= BF16_RMS, err


def test_chunked_equals_one_pass(ours, jitted, video, latents):
  """The scan over chunks (and a chunk of 2 latent frames with a shorter tail) equals one
  pass over all frames after the first."""
  vae = ours.module()
  long_video = np.concatenate([video, video[:, 1:5] * 0.5], axis=1)   # 13 frames: 4 latents
  one_pass = np.asarray(jax.jit(lambda x: vae.encode(x, chunk=None))(long_video))
  by_one = np.asarray(jax.jit(lambda x: vae.encode(x, chunk=1))(long_video))
  by_two = np.asarray(jax.jit(lambda x: vae.encode(x, chunk=2))(long_video))
  np.testing.assert_allclose(by_one, one_pass, rtol=0, atol=1e-5)
  np.testing.assert_allclose(by_two, one_pass, rtol=0, atol=1e-5)
  # causality: the first 3 latents do not depend on the 4 extra frames
  np.testing.assert_allclose(one_pass[:, :3], jitted[0](ours.params, video), rtol=0, atol=1e-5)
  dec_one = np.asarray(jax.jit(lambda z: vae.decode(z, chunk=None))(latents))
  np.testing.assert_allclose(jitted[1](ours.params, latents), dec_one, rtol=0, atol=1e-5)


def test_strict_loader_names_missing_and_extra(torch_vae, state_dict):
  cfg = wm.config_from_diffusers(dict(torch_vae.config))
  vae = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  name = "decoder.up_blocks.1.upsamplers.0.time_conv.weight"
  missing = {k: v for k, v in state_dict.items() if k != name}
  with pytest.raises(KeyError, match=name.replace(".", r"\.")):
    wm.load_into_vae(vae, missing)
  extra = dict(state_dict, **{"encoder.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"encoder\.extra\.weight"):
    wm.load_into_vae(vae, extra)
  with pytest.raises(ValueError, match="Wan 2.2"):
    wm.config_from_diffusers(dict(torch_vae.config, is_residual=True))


def test_save_pretrained_round_trip(torch_vae, ours, jitted, video, latents, tmp_path):
  torch_vae.save_pretrained(tmp_path)
  loaded = WanVideoAutoencoder(wm.load_diffusers_folder(str(tmp_path)))
  for (path, a), (_, b) in zip(nnx.to_flat_state(loaded.params), nnx.to_flat_state(ours.params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))
  np.testing.assert_array_equal(jitted[0](loaded.params, video), jitted[0](ours.params, video))
  np.testing.assert_array_equal(jitted[1](loaded.params, latents),
                                jitted[1](ours.params, latents))


def test_shape_arithmetic(ours):
  assert (ours.latent_channels, ours.temporal_factor, ours.spatial_factor) == (4, 4, 8)
  assert [ours.latent_frames(f) for f in (1, 5, 9, 81)] == [1, 2, 3, 21]
  for bad in (0, 4, 8, 10):
    with pytest.raises(ValueError):
      ours.latent_frames(bad)
  assert ours.latent_hw(480, 832) == (60, 104)
  with pytest.raises(ValueError):
    ours.latent_hw(20, 16)
  assert ours.pixel_shape((21, 60, 104, 16)) == (81, 480, 832)
  assert ours.pixel_shape((1, 2, 3)) == (1, 16, 24)


# Tiling: a 48x40 frame in 32x32 tiles every (16, 24) pixels is a 3x2 grid with cut-short
# border tiles; the overlaps differ in height and width (a swapped axis fails), and in
# latents the height blend spans 2 rows (weights 0, 1/2), in pixels 16 rows and 8 columns.
TILE, STRIDE, TILED_SIZE = (32, 32), (16, 24), (48, 40)


@pytest.fixture(scope="module")
def tiled_ours(ours):
  return WanVideoAutoencoder(ours.module(), tile_size=TILE, tile_stride=STRIDE)


def _diffusers_tiled(torch_vae, fn):
  torch_vae.enable_tiling(tile_sample_min_height=TILE[0], tile_sample_min_width=TILE[1],
                          tile_sample_stride_height=STRIDE[0],
                          tile_sample_stride_width=STRIDE[1])
  try:
    with torch.no_grad():
      return fn()
  finally:
    torch_vae.disable_tiling()   # the module-scoped model is shared with the other tests


def test_tiled_encode_matches_diffusers(torch_vae, ours, tiled_ours):
  video = np.random.default_rng(2).uniform(-1, 1, (1, 5, *TILED_SIZE, 3)).astype(np.float32)
  raw = _from_torch(_diffusers_tiled(
      torch_vae, lambda: torch_vae.encode(_to_torch(video)).latent_dist.mean))
  mean, std = _stats()
  want = (raw - mean) / std
  got = jax.jit(lambda p, x: tiled_ours.encode(x, params=p))(tiled_ours.params, video)
  assert got.shape == (1, 2, 6, 5, 4)
  err = np.abs(np.asarray(got) - want).max()
  assert err < 1e-5, err   # 2e-6 measured (float32, CPU)
  # the tiles matter: the untiled encode is far from the tiled one
  untiled = jax.jit(lambda p, x: ours.encode(x, params=p))(ours.params, video)
  assert np.abs(np.asarray(untiled) - want).max() > 1e-2


def test_tiled_decode_matches_diffusers(torch_vae, ours, tiled_ours):
  h, w = TILED_SIZE[0] // 8, TILED_SIZE[1] // 8
  latents = np.random.default_rng(3).normal(size=(1, 2, h, w, 4)).astype(np.float32)
  mean, std = _stats()
  z = _to_torch((latents * std + mean).astype(np.float32))
  want = _from_torch(_diffusers_tiled(torch_vae, lambda: torch_vae.decode(z).sample))
  assert 0.01 < np.mean(np.abs(want) < 1) < 0.99, "clipping decides the reference"
  got = jax.jit(lambda p, x: tiled_ours.decode(x, params=p))(tiled_ours.params, latents)
  assert got.shape == (1, 5, *TILED_SIZE, 3)
  err = np.abs(np.asarray(got) - want).max()
  assert err < 2e-5, err   # 6e-6 measured (float32, CPU): 2x for other XLA/torch builds
  untiled = jax.jit(lambda p, x: ours.decode(x, params=p))(ours.params, latents)
  assert np.abs(np.asarray(untiled) - want).max() > 1e-2


def test_tiling_off_or_frame_within_tile_is_untiled(ours, jitted, video, latents):
  """Tiling off, or a frame no larger than the tile (16x24 in 32x32), takes the untiled path
  bit for bit."""
  for ae in (WanVideoAutoencoder(ours.module(), tile_size=(0, 0), tile_stride=(0, 0)),
             WanVideoAutoencoder(ours.module(), tile_size=TILE, tile_stride=STRIDE)):
    np.testing.assert_array_equal(jitted[0](ae.params, video), jitted[0](ours.params, video))
    np.testing.assert_array_equal(jitted[1](ae.params, latents),
                                  jitted[1](ours.params, latents))
    assert not ae.uses_tiles(*SIZE)


def test_bad_tiling_fields_are_named():
  good = dict(kind="wan", path="", tile_height=32, tile_width=32, tile_stride_height=16,
              tile_stride_width=24)
  for field, value, match in (("tile_stride_height", 0, "positive multiple"),
                              ("tile_stride_width", 12, "multiple of the spatial factor 8"),
                              ("tile_stride_height", 40, "exceeds video_ae.tile_height=32"),
                              ("tile_width", 20, "multiple")):
    cfg = ml_collections.ConfigDict(dict(good, **{field: value}))
    with pytest.raises(ValueError, match=rf"video_ae\.{field}: {value}.*{match}"):
      encoders.build_video(cfg)
  # valid tiling passes the check and fails only later, on the missing checkpoint path
  with pytest.raises(ValueError, match="path"):
    encoders.build_video(ml_collections.ConfigDict(good))
