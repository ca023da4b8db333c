"""The Oobleck audio VAE port against diffusers' `AutoencoderOobleck` (float32, CPU), on a tiny
random config (hop 8, 4 latent channels, stereo): encode (posterior mean), decode, weight-norm
folding under both torch namings, the strict loader, a save_pretrained round trip and the
length arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderOobleck
from flax import nnx

from skyreels_jax.models.autoencoders.oobleck_vae import (OobleckAudioAutoencoder,
                                                          OobleckConfig, OobleckVAE)
from skyreels_jax.models.mappings import oobleck as om

RTOL = 1e-4
BF16_RMS = 4e-2      # relative RMS error of bf16 against the float32 reference
TINY = dict(encoder_hidden_size=8, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
            decoder_channels=8, decoder_input_channels=4, audio_channels=2)
HOP, LATENTS, SAMPLES = 8, 12, 93   # 93 samples pad to 96 = 12 hops


@pytest.fixture(scope="module")
def torch_vae():
  torch.manual_seed(0)
  model = AutoencoderOobleck(**TINY).eval()
  with torch.no_grad():   # every tensor away from its init (zero Snake logs, g = |v|)
    for name, p in model.named_parameters():
      if name.endswith(("alpha", "beta")):
        p.copy_(0.5 * torch.randn(p.shape))
      elif name.endswith("weight_g"):
        p.mul_(0.5 + torch.rand(p.shape))
      else:
        p.add_(0.1 * torch.randn(p.shape))
  return model


@pytest.fixture(scope="module")
def state_dict(torch_vae):
  return {k: v.detach().numpy().copy() for k, v in torch_vae.state_dict().items()}


@pytest.fixture(scope="module")
def ours(torch_vae, state_dict):
  vae = OobleckVAE(om.config_from_diffusers(dict(torch_vae.config)), rngs=nnx.Rngs(0))
  om.load_into_vae(vae, state_dict)
  return OobleckAudioAutoencoder(vae)


@pytest.fixture(scope="module")
def audio():
  return np.random.default_rng(0).uniform(-1, 1, (2, SAMPLES, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def latents():
  return np.random.default_rng(1).normal(size=(2, LATENTS, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def jitted(ours):
  """Wrapper calls inside jit, with the params as jit arguments (one compile per function:
  the round-trip test reuses them with other params of the same structure)."""
  return (jax.jit(lambda p, x: ours.encode(x, params=p)),
          jax.jit(lambda p, z: ours.decode(z, params=p)))


def _close(got, want):
  err = np.abs(np.asarray(got) - want).max()
  assert err <= RTOL * np.abs(want).max(), (err, np.abs(want).max())
  return err


def _to_torch(x):   # (B, T, C) -> (B, C, T)
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _from_torch(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def test_encode_matches_diffusers(torch_vae, ours, jitted, audio):
  padded = np.pad(audio, ((0, 0), (0, LATENTS * HOP - SAMPLES), (0, 0)))   # our zero-padding
  with torch.no_grad():
    want = _from_torch(torch_vae.encode(_to_torch(padded)).latent_dist.mean)
  got = jitted[0](ours.params, audio)
  assert got.shape == (2, LATENTS, 4) == want.shape
  assert np.abs(want).max() > 0.1
  _close(got, want)


def test_decode_matches_diffusers(torch_vae, ours, jitted, latents):
  with torch.no_grad():
    want = _from_torch(torch_vae.decode(_to_torch(latents)).sample)
  inside = np.abs(want) < 1
  assert 0.2 < inside.mean() < 1, "the reference is (nearly) all clipped or never: weak test"
  got = np.asarray(jitted[1](ours.params, latents))
  assert got.shape == (2, LATENTS * HOP, 2)
  _close(got, np.clip(want, -1, 1))
  np.testing.assert_array_equal(np.abs(got[~inside]), 1.0)   # ours clips, diffusers does not
  unclipped = jax.jit(lambda z: ours.module().decode(z))(latents)
  _close(unclipped, want)


def test_bf16_matches_diffusers_at_the_stated_tolerance(torch_vae, ours, audio, latents):
  """audio_ae.dtype=bfloat16: bf16 weights and compute, float32 in and out. Against the
  float32 diffusers reference: relative RMS error <= BF16_RMS (measured: 2.0e-2 encode, 1.3e-2 decode), and above 1e-3 (bf16 really ran)."""
  half = OobleckAudioAutoencoder(ours.module(), dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
  padded = np.pad(audio, ((0, 0), (0, LATENTS * HOP - SAMPLES), (0, 0)))
  with torch.no_grad():
    enc = _from_torch(torch_vae.encode(_to_torch(padded)).latent_dist.mean)
    dec = np.clip(_from_torch(torch_vae.decode(_to_torch(latents)).sample), -1, 1)
  got_enc = jax.jit(lambda p, x: half.encode(x, params=p))(half.params, audio)
  got_dec = jax.jit(lambda p, z: half.decode(z, params=p))(half.params, latents)
  assert got_enc.dtype == got_dec.dtype == jnp.float32
  for got, want in ((got_enc, enc), (got_dec, dec)):
    err = np.sqrt(np.mean((np.asarray(got) - want) ** 2) / np.mean(want ** 2))
    assert 1e-3 < err <= BF16_RMS, err


def test_parametrizations_naming_loads_the_same(ours, state_dict):
  """torch's newer `parametrizations.weight.original0/1` names fold to the same kernels."""
  renamed = {k.replace("weight_g", "parametrizations.weight.original0")
             .replace("weight_v", "parametrizations.weight.original1"): v
             for k, v in state_dict.items()}
  assert renamed.keys() != state_dict.keys()
  vae = OobleckVAE(OobleckConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in TINY.items()}), rngs=nnx.Rngs(1))
  om.load_into_vae(vae, renamed)
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(vae)),
                               nnx.to_flat_state(ours.params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))


def test_strict_loader_names_missing_and_extra(torch_vae, state_dict):
  cfg = om.config_from_diffusers(dict(torch_vae.config))
  vae = nnx.eval_shape(lambda: OobleckVAE(cfg, rngs=nnx.Rngs(0)))
  name = "decoder.block.1.res_unit2.snake2.beta"
  with pytest.raises(KeyError, match=name.replace(".", r"\.")):
    om.load_into_vae(vae, {k: v for k, v in state_dict.items() if k != name})
  lone = "encoder.block.0.conv1.weight_g"
  with pytest.raises(KeyError, match=r"encoder\.block\.0\.conv1\.weight_v.*weight_g"):
    om.load_into_vae(vae, {k: v for k, v in state_dict.items() if k != lone})
  extra = dict(state_dict, **{"encoder.extra.alpha": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"encoder\.extra\.alpha"):
    om.load_into_vae(vae, extra)
  wrong = dict(state_dict, **{"decoder.conv1.bias": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"decoder\.conv1\.bias"):
    om.load_into_vae(vae, wrong)


def test_config_refuses_what_it_cannot_run(torch_vae):
  base = dict(torch_vae.config)
  with pytest.raises(ValueError, match="not even"):
    om.config_from_diffusers(dict(base, downsampling_ratios=[3, 4]))
  with pytest.raises(ValueError, match="decoder_input_channels"):
    om.config_from_diffusers(dict(base, decoder_input_channels=8))
  with pytest.raises(ValueError, match="channel_multiples"):
    om.config_from_diffusers(dict(base, channel_multiples=[1, 2, 4]))
  published = om.config_from_diffusers({})   # diffusers' defaults: stable-audio-open-1.0
  assert (published.hop, published.latent_channels) == (2048, 64)


def test_save_pretrained_round_trip(torch_vae, ours, jitted, audio, latents, tmp_path):
  torch_vae.save_pretrained(tmp_path)
  loaded = OobleckAudioAutoencoder(om.load_diffusers_folder(str(tmp_path)))
  for (path, a), (_, b) in zip(nnx.to_flat_state(loaded.params), nnx.to_flat_state(ours.params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))
  np.testing.assert_array_equal(jitted[0](loaded.params, audio), jitted[0](ours.params, audio))
  np.testing.assert_array_equal(jitted[1](loaded.params, latents),
                                jitted[1](ours.params, latents))


def test_length_arithmetic(ours):
  assert (ours.hop, ours.channels, ours.latent_channels) == (HOP, 2, 4)
  assert [ours.latent_length(s) for s in (1, 7, 8, 9, 93, 96)] == [1, 1, 1, 2, 12, 12]
  assert [ours.num_samples(t) for t in (1, 12)] == [8, 96]
  for s in (1, 8, 9, 93, 1000):
    assert ours.num_samples(ours.latent_length(s)) >= s > ours.num_samples(
        ours.latent_length(s) - 1)
  with pytest.raises(ValueError, match="expected"):
    ours.encode(np.zeros((1, 16, 1), np.float32))
  with pytest.raises(ValueError, match="expected"):
    ours.decode(np.zeros((1, 2, 8), np.float32))


def test_published_layout_abstract():
  """stable-audio-open-1.0's layout (diffusers' defaults), abstract: the table covers every
  param exactly once and a second of stereo traces to 22 latents of 64 channels."""
  vae = nnx.eval_shape(lambda: OobleckVAE(om.config_from_diffusers({}), rngs=nnx.Rngs(0)))
  params = {tuple(map(str, p)): v.get_value().shape
            for p, v in nnx.to_flat_state(nnx.state(vae, nnx.Param))}
  targets = [e.target for e in om.oobleck_entries(vae.config)]
  assert sorted(targets) == sorted(params)
  assert sum(int(np.prod(s)) for s in params.values()) > 100e6   # ~157M, decoder the most
  ae = OobleckAudioAutoencoder(vae)
  z = jax.eval_shape(lambda p, a: ae.encode(a, params=p), ae.params,
                     jax.ShapeDtypeStruct((1, 44100, 2), np.float32))
  assert z.shape == (1, 22, 64)
  x = jax.eval_shape(lambda p, z: ae.decode(z, params=p), ae.params, z)
  assert x.shape == (1, 22 * 2048, 2)
