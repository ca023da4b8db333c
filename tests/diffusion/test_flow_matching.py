"""Flow matching (skyreels_jax/diffusion/flow_matching.py): the one sign convention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base as base_config
from skyreels_jax.config import ConfigError
from skyreels_jax.diffusion import flow_matching as fm


def normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- Noising and targets: z_t = t z0 + (1 - t) eps, v = z0 - eps.

def test_noisy_endpoints_and_per_example_times():
  z0, eps = normal(0, (3, 2, 4)), normal(1, (3, 2, 4))
  z = np.asarray(fm.noisy(z0, eps, jnp.array([1.0, 0.0, 0.25])))
  np.testing.assert_allclose(z[0], z0[0], atol=1e-7)          # t = 1: data
  np.testing.assert_allclose(z[1], eps[1], atol=1e-7)         # t = 0: noise
  np.testing.assert_allclose(z[2], 0.25 * z0[2] + 0.75 * eps[2], atol=1e-6)


def test_velocity_target_is_the_time_derivative_of_the_path():
  z0, eps = normal(2, (2, 5)), normal(3, (2, 5))
  t, h = np.array([0.3, 0.8], np.float32), 1e-2
  fd = (np.asarray(fm.noisy(z0, eps, t + h)) - np.asarray(fm.noisy(z0, eps, t - h))) / (2 * h)
  np.testing.assert_allclose(fd, np.asarray(fm.velocity_target(z0, eps)), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(np.asarray(fm.velocity_target(z0, eps)), z0 - eps)


def test_predict_data_inverts_the_path():
  z0, eps = normal(4, (2, 3, 3)), normal(5, (2, 3, 3))
  t = jnp.array([0.1, 0.6])
  z_t = fm.noisy(z0, eps, t)
  np.testing.assert_allclose(fm.predict_data(z_t, fm.velocity_target(z0, eps), t), z0,
                             atol=1e-5)


def test_model_timestep_is_the_noise_level_in_thousandths():
  np.testing.assert_allclose(fm.model_timestep(jnp.array([0.0, 0.25, 1.0])),
                             [1000.0, 750.0, 0.0])


# --- Loss.

def test_masked_mse_ignores_kept_positions_and_averages_over_the_batch():
  pred, target = normal(6, (3, 4, 2, 2)), normal(7, (3, 4, 2, 2))
  keep = np.zeros((3, 4, 1, 1), np.float32)
  keep[0, 0] = 1.0          # example 0: frame 0 kept
  keep[1, :2] = 1.0         # example 1: frames 0, 1 kept
  keep[2] = 1.0             # example 2: everything kept -> adds no loss
  loss = float(fm.masked_mse(pred, target, keep))
  err = (pred - target) ** 2
  expected = (err[0, 1:].mean() + err[1, 2:].mean()) / 3
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Any prediction where keep = 1 leaves the loss unchanged.
  pred2 = np.where(keep > 0.5, 100.0 + normal(8, pred.shape), pred)
  np.testing.assert_allclose(float(fm.masked_mse(pred2, target, keep)), loss, rtol=1e-6)
  # A prediction where keep = 0 does change it.
  pred3 = pred.copy()
  pred3[1, 3] += 1.0
  assert abs(float(fm.masked_mse(pred3, target, keep)) - loss) > 1e-3
  # Nothing generated anywhere: zero loss, not NaN.
  assert float(fm.masked_mse(pred, target, np.ones_like(keep))) == 0.0


def test_an_examples_weight_does_not_depend_on_its_batch():
  """The gradient reaching example 0's prediction is the same whether the other examples of
  its batch generate everything or nothing (e.g. a lone audio example among T2V ones)."""
  pred, target = normal(20, (4, 6, 3)), normal(21, (4, 6, 3))
  keep_all = np.zeros((4, 6, 1), np.float32)
  keep_lone = keep_all.copy()
  keep_lone[1:] = 1.0       # examples 1-3: nothing to generate
  grad = lambda keep: np.asarray(jax.grad(fm.masked_mse)(jnp.asarray(pred), target, keep))
  np.testing.assert_allclose(grad(keep_lone)[0], grad(keep_all)[0], rtol=1e-6)
  assert np.abs(grad(keep_all)[1:]).max() > 0 and np.abs(grad(keep_lone)[1:]).max() == 0


def test_flow_matching_loss_weights_both_streams():
  vz0, veps, vpred = (normal(s, (2, 3, 2, 2, 4)) for s in (10, 11, 12))
  az0, aeps, apred = (normal(s, (2, 5, 3)) for s in (13, 14, 15))
  vkeep = np.zeros((2, 3, 2, 2, 1), np.float32)
  vkeep[:, 0] = 1.0
  akeep = np.zeros((2, 5, 1), np.float32)
  total, parts = fm.flow_matching_loss(
      video_pred=vpred, video_z0=vz0, video_eps=veps, video_keep=vkeep, audio_pred=apred,
      audio_z0=az0, audio_eps=aeps, audio_keep=akeep, video_weight=0.7, audio_weight=2.0)
  lv = np.mean([((vpred - (vz0 - veps)) ** 2)[i, 1:].mean() for i in range(2)])
  la = ((apred - (az0 - aeps)) ** 2).mean()
  np.testing.assert_allclose(parts["loss_video"], lv, rtol=1e-5)
  np.testing.assert_allclose(parts["loss_audio"], la, rtol=1e-5)
  np.testing.assert_allclose(total, 0.7 * lv + 2.0 * la, rtol=1e-5)
  total_v, parts_v = fm.flow_matching_loss(video_pred=vpred, video_z0=vz0, video_eps=veps,
                                           video_keep=vkeep, video_weight=0.7)
  np.testing.assert_allclose(total_v, 0.7 * lv, rtol=1e-5)
  assert float(parts_v["loss_audio"]) == 0.0
  # Per example (the loss by timestep quartile adds these up): the loss is their mean.
  _, parts_e = fm.flow_matching_loss(
      video_pred=vpred, video_z0=vz0, video_eps=veps, video_keep=vkeep, audio_pred=apred,
      audio_z0=az0, audio_eps=aeps, audio_keep=akeep, video_weight=0.7, audio_weight=2.0,
      return_per_example=True)
  want = [0.7 * ((vpred - (vz0 - veps)) ** 2)[i, 1:].mean()
          + 2.0 * ((apred - (az0 - aeps)) ** 2)[i].mean() for i in range(2)]
  np.testing.assert_allclose(parts_e["per_example"], want, rtol=1e-5)


# --- x-prediction (flow.video_prediction / audio_prediction = "data").

def test_velocity_from_data_is_the_velocity_of_the_true_data():
  z0, eps = normal(20, (3, 4, 2)), normal(21, (3, 4, 2))
  t = jnp.array([0.0, 0.5, 0.9])
  z_t = fm.noisy(z0, eps, t)
  np.testing.assert_allclose(fm.velocity_from(z0, z_t, t, "data"), z0 - eps, atol=1e-5)
  np.testing.assert_array_equal(fm.velocity_from(eps, z_t, t, "velocity"), eps)
  # At t = 1 (Heun's last evaluation) the divisor is held at DATA_MIN_GAP: finite.
  v1 = fm.velocity_from(z0 + 1.0, z0, jnp.ones((3,)), "data")
  np.testing.assert_allclose(v1, np.full(z0.shape, 1.0 / fm.DATA_MIN_GAP), rtol=1e-6)
  with pytest.raises(ValueError, match="prediction='eps'"):
    fm.velocity_from(z0, z_t, t, "eps")


def test_data_prediction_loss_is_the_velocity_loss_of_its_implied_velocity():
  z0, eps, pred = (normal(s, (2, 3, 2, 2, 4)) for s in (22, 23, 24))
  az0, aeps, apred = (normal(s, (2, 5, 3)) for s in (25, 26, 27))
  keep, akeep = np.zeros((2, 3, 2, 2, 1), np.float32), np.zeros((2, 5, 1), np.float32)
  t = np.array([0.2, 0.7], np.float32)
  streams = dict(video_z0=z0, video_eps=eps, video_keep=keep, audio_z0=az0, audio_eps=aeps,
                 audio_keep=akeep, t=t)
  _, parts = fm.flow_matching_loss(video_pred=pred, audio_pred=apred, **streams,
                                   video_prediction="data")
  # v - v_hat = (z0 - z0_hat) / (1 - t): the data error weighted by 1 / (1 - t)^2.
  want = np.mean([((pred[i] - z0[i]) ** 2).mean() / (1 - t[i]) ** 2 for i in range(2)])
  np.testing.assert_allclose(parts["loss_video"], want, rtol=1e-4)
  # The audio stream keeps its own (velocity) prediction.
  np.testing.assert_allclose(parts["loss_audio"], ((apred - (az0 - aeps)) ** 2).mean(),
                             rtol=1e-5)
  perfect, _ = fm.flow_matching_loss(video_pred=z0, audio_pred=az0, **streams,
                                     video_prediction="data", audio_prediction="data")
  assert float(perfect) < 1e-10


# --- Timesteps.

@pytest.mark.parametrize("sampling", fm.SAMPLERS)
def test_sample_t_range_and_shift(sampling):
  rng = jax.random.key(0)
  t1 = np.asarray(fm.sample_t(rng, 4096, sampling=sampling, shift=1.0))
  t3 = np.asarray(fm.sample_t(rng, 4096, sampling=sampling, shift=3.0))
  for t in (t1, t3):
    assert t.shape == (4096,) and t.min() > 0.0 and t.max() < 1.0
  # A shift > 1 only adds noise: every draw moves towards t = 0, the mean clearly so.
  assert np.all(t3 <= t1 + 1e-7)
  assert t1.mean() - t3.mean() > 0.1
  np.testing.assert_allclose(t1.mean(), 0.5, atol=0.03)     # both samplers symmetric
  if sampling == "logit_normal":                            # concentrated around 0.5
    assert np.mean(np.abs(t1 - 0.5) < 0.25) > 0.6
  else:
    assert abs(np.mean(t1 < 0.25) - 0.25) < 0.03
  with pytest.raises(ValueError, match="timestep_sampling"):
    fm.sample_t(rng, 2, sampling="cosine")


def test_uniform_share_mixes_uniform_times_into_the_logit_normal():
  """The demo's logit-normal (0.8, 0.8) almost never draws sigma < 0.1 (the clean end, where
  edges are drawn); a uniform share of 0.3 draws it in ~3% of the batch, and 0 leaves the
  draws unchanged."""
  rng, n = jax.random.key(0), 20_000
  kw = dict(sampling="logit_normal", logit_mean=0.8, logit_std=0.8)
  plain = np.asarray(fm.sample_t(rng, n, **kw))
  np.testing.assert_array_equal(np.asarray(fm.sample_t(rng, n, uniform_share=0.0, **kw)),
                                plain)
  mixed = np.asarray(fm.sample_t(rng, n, uniform_share=0.3, **kw))
  assert np.mean(1 - plain < 0.1) < 1e-3
  assert abs(np.mean(1 - mixed < 0.1) - 0.03) < 0.006
  assert abs(np.mean(mixed != plain) - 0.3) < 0.02       # 30% redrawn, the rest kept
  everything = np.asarray(fm.sample_t(rng, n, uniform_share=1.0, **kw))
  assert abs(np.mean(everything < 0.25) - 0.25) < 0.02
  config = base_config.get_config()
  config.flow.uniform_share = 1.5
  with pytest.raises(ConfigError, match="flow.uniform_share"):
    fm.check_config(config)


def test_shift_sigma_fixes_endpoints_and_is_monotone():
  sigma = np.linspace(0, 1, 11, dtype=np.float32)
  for shift in (0.5, 1.0, 3.0, 7.0):
    s = np.asarray(fm.shift_sigma(sigma, shift))
    np.testing.assert_allclose(s[[0, -1]], [0.0, 1.0], atol=1e-6)
    assert np.all(np.diff(s) > 0)
  np.testing.assert_allclose(fm.shift_sigma(sigma, 1.0), sigma, atol=1e-7)
  np.testing.assert_allclose(fm.shift_sigma(0.5, 3.0), 0.75, rtol=1e-6)


def test_sampling_times_run_from_noise_to_data():
  t = np.asarray(fm.sampling_times(10, shift=1.0))
  np.testing.assert_allclose(t, np.linspace(0, 1, 11), atol=1e-6)
  ts = np.asarray(fm.sampling_times(10, shift=3.0))
  np.testing.assert_allclose(ts[[0, -1]], [0.0, 1.0], atol=1e-6)
  assert np.all(np.diff(ts) > 0) and np.all(ts <= t + 1e-7) and ts[5] < 0.3


def test_resolution_shift_documented_values():
  """fixed: the configured shift at every size; auto: shift * sqrt(tokens / base tokens)."""
  assert fm.resolution_shift(3.0, 100_000, mode="fixed", base_tokens=4096) == 3.0
  assert fm.resolution_shift(2.0, 4096, mode="auto", base_tokens=4096) == pytest.approx(2.0)
  assert fm.resolution_shift(2.0, 4 * 4096, mode="auto", base_tokens=4096) == pytest.approx(4.0)
  assert fm.resolution_shift(1.0, 1024, mode="auto", base_tokens=4096) == pytest.approx(0.5)
  # 720p, 5 s at 16 fps through Wan (21 x 90 x 160 latents, patch 1 x 2 x 2): ~4.3.
  tokens = fm.video_tokens((21, 90, 160), 1, 2)
  assert tokens == 75_600
  assert fm.resolution_shift(1.0, tokens, mode="auto", base_tokens=4096) == pytest.approx(
      4.296, abs=1e-3)
  with pytest.raises(ValueError, match="shift_mode"):
    fm.resolution_shift(1.0, 1, mode="sqrt", base_tokens=1)
