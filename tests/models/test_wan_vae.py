"""The Wan-2.1 VAE port against diffusers' `AutoencoderKLWan` (float32, CPU), on a tiny random
config with the real compression (4x time, 8x8 space): encode (normalised posterior mean),
decode, chunked vs one-pass runs, the strict loader and a save_pretrained round trip."""

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx

from skyreels_jax.models.autoencoders.wan_vae import WanVAE, WanVideoAutoencoder
from skyreels_jax.tools import wan_vae_mapping as wm

RTOL = 1e-4
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
