"""The cascade refiner's condition and training inputs (skyreels_jax/tasks/refiner.py)."""

import jax
import numpy as np
import pytest

from conftest import small_refiner_config

from configs import tiny_refiner
from skyreels_jax.config import ConfigError, derive, validate
from skyreels_jax.tasks.examples import make_codecs, training_inputs
from skyreels_jax.tasks.refiner import (draw_keyframe_frames, keyframe_latent_frames,
                                        keyframe_positions, low_res_view, refiner_condition,
                                        upsample_latents)


def reference_upsample(z, grid):
  """numpy reference: np.interp per axis; time align-corners (low frame i at target position
  i (T - 1) / (T_low - 1)), space half-pixel centres (low cell i at (i + 0.5) s - 0.5)."""
  axes = []
  for axis, n_out in zip((1, 2, 3), grid):
    n_in = z.shape[axis]
    if axis == 1:
      xp = np.arange(n_in) * (n_out - 1) / max(n_in - 1, 1)
    else:
      xp = (np.arange(n_in) + 0.5) * n_out / n_in - 0.5
    axes.append((axis, xp, n_out))
  for axis, xp, n_out in axes:
    z = np.apply_along_axis(lambda v, xp=xp, n=n_out: np.interp(np.arange(n), xp, v), axis, z)
  return z


def test_condition_is_linear_upsampling_and_nothing_is_kept():
  rng = np.random.default_rng(0)
  z_low = rng.normal(size=(2, 4, 3, 3, 5)).astype(np.float32)
  grid = (7, 6, 6)
  cond, keep = map(np.asarray, refiner_condition(z_low, grid))
  assert cond.shape == (2, 7, 6, 6, 5) and keep.shape == (2, 7, 6, 6, 1)
  assert not keep.any()
  np.testing.assert_allclose(cond, reference_upsample(z_low, grid), atol=1e-5)
  # Spot numbers: low frame i sits at target frame 2i (align corners, 4 -> 7 frames); target
  # cell 0 clamps to low cell 0, target cell 1 = 3/4 low cell 0 + 1/4 low cell 1 (position
  # 0.25 with half-pixel centres).
  np.testing.assert_allclose(cond[:, 6, 0, 0], z_low[:, 3, 0, 0], atol=1e-6)
  np.testing.assert_allclose(cond[:, 2, 0, 0], z_low[:, 1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(cond[:, 6, 1, 0], 0.75 * z_low[:, 3, 0, 0] + 0.25 * z_low[:, 3, 1, 0],
                             atol=1e-6)


def test_scale_one_is_the_low_res_latent():
  z = np.random.default_rng(1).normal(size=(2, 5, 4, 3, 6)).astype(np.float32)
  cond, _ = refiner_condition(z, z.shape[1:4])
  np.testing.assert_allclose(np.asarray(cond), z, atol=1e-6)
  np.testing.assert_allclose(np.asarray(upsample_latents(z, (5, 4, 3))), z, atol=1e-6)


def test_keyframe_positions_and_random_training_frames():
  # frame / temporal factor: exact at frame 0 and at the frames that end a causal latent.
  np.testing.assert_allclose(np.asarray(keyframe_positions(_CausalVAE(), (0, 4, 6, 16))),
                             [0.0, 1.0, 1.5, 4.0])
  draws = np.stack([np.asarray(draw_keyframe_frames(jax.random.key(i), 9, 3))
                    for i in range(200)])
  assert all(len(set(d)) == 3 and list(d) == sorted(d) for d in draws)
  assert set(draws.ravel()) == set(range(9))     # every frame of the clip gets drawn
  assert draws.min() == 0 and draws.max() == 8


def test_low_res_view_subsamples_frames_and_averages_blocks():
  v = np.random.default_rng(2).uniform(-1, 1, (1, 5, 4, 6, 3)).astype(np.float32)
  low = np.asarray(low_res_view(v, 2, 2))
  assert low.shape == (1, 3, 2, 3, 3)   # frames 0, 2, 4
  np.testing.assert_allclose(low[0, 1, 1, 2], v[0, 2, 2:4, 4:6].mean((0, 1)), atol=1e-6)


class _CausalVAE:   # the Wan VAE's temporal layout: 1 + 4k frames
  temporal_factor = 4

  def pixel_shape(self, shape):
    return 1 + 4 * (shape[0] - 1), shape[1] * 8, shape[2] * 8


class _FrameStackVAE:   # the identity VAE with temporal_factor 2: latent j = frames 2j, 2j+1
  temporal_factor = 2

  def pixel_shape(self, shape):
    return 2 * shape[0], shape[1] * 4, shape[2] * 4


def test_keyframe_pixel_frames_map_to_their_latent_frames():
  assert keyframe_latent_frames(_CausalVAE(), (0, 1, 4, 5, 16)) == (0, 1, 2, 4)
  assert keyframe_latent_frames(_FrameStackVAE(), (0, 1, 5)) == (0, 2)
  codecs, _ = make_codecs(tiny_refiner.get_config())
  assert keyframe_latent_frames(codecs.video_ae, (0, 7, 3)) == (0, 3, 7)


def test_training_inputs_feed_noisy_condition_and_keyframe_tokens():
  config = small_refiner_config()
  config.data.batch_size = 2
  validate(config)
  geom, _ = derive(config)
  codecs, tokenizer = make_codecs(config)
  rng = np.random.default_rng(3)
  tok = tokenizer.batch(["a red ball", "rain"])
  batch = {"video": rng.uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32),
           "audio": rng.uniform(-1, 1, (2, geom.num_samples, 1)).astype(np.float32),
           "text_ids": tok["text_ids"], "text_mask": tok["text_mask"]}
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs,
                                            use_audio=True))
  inputs, terms = jax.tree.map(np.asarray, fn(batch, jax.random.key(0)))
  c = geom.video_channels
  assert geom.video_grid == (8, 8, 8) and c == 48
  assert inputs["video"].shape == (2, 8, 8, 8, 2 * c + 1)
  z0 = np.asarray(codecs.video_ae.encode(batch["video"]))
  z_low = np.asarray(codecs.video_ae.encode(low_res_view(batch["video"], 2, 2)))
  assert z_low.shape == (2, 4, 4, 4, c)
  cond = inputs["video"][..., c:2 * c]
  np.testing.assert_allclose(cond, reference_upsample(z_low, (8, 8, 8)), atol=1e-5)
  assert not inputs["video"][..., 2 * c].any() and not terms["video_keep"].any()  # loss everywhere
  t = terms["t"][:, None, None, None, None]
  np.testing.assert_allclose(inputs["video"][..., :c], t * z0 + (1 - t) * terms["video_eps"],
                             atol=1e-5)
  # Keyframes: 2 random frames (tiny: 1 latent frame = 1 pixel frame), each still's latent as
  # its own clean token Concat(k, k, 1) at RoPE time = its frame.
  times = inputs["keyframe_times"]
  frames = times.astype(int)
  assert times.shape == (2,) and len(set(frames)) == 2 and np.all(times == frames)
  k = inputs["keyframes"]
  assert k.shape == (2, 2, 8, 8, 2 * c + 1)
  np.testing.assert_allclose(k[..., :c], z0[:, frames], atol=1e-6)
  np.testing.assert_allclose(k[..., c:2 * c], z0[:, frames], atol=1e-6)
  assert np.all(k[..., 2 * c] == 1)
  assert "keyframe_z0" not in terms            # given, not generated: no keyframe loss
  # Audio: the base model's track, clean (timestep 0 = t 1), kept whole, no loss.
  ca = geom.audio_channels
  np.testing.assert_allclose(inputs["audio"][..., :ca], terms["audio_z0"], atol=1e-6)
  np.testing.assert_allclose(inputs["audio"][..., ca:2 * ca], terms["audio_z0"], atol=1e-6)
  assert np.all(inputs["audio"][..., 2 * ca] == 1) and np.all(terms["audio_keep"] == 1)
  np.testing.assert_array_equal(inputs["audio_timestep"], [0.0, 0.0])
  np.testing.assert_array_equal(terms["tasks"], [-1, -1])


def test_start_t_trains_on_the_path_from_the_samplers_start():
  """refiner.start_t = s: t is drawn in [s, 1], and the noisy input at t = s is the sampling
  start s * cond + (1 - s) * eps (eps: the noise the full-step refiner draws with the same
  key), at t = 1 the clip; the target is the straight path's velocity."""
  from skyreels_jax.tasks.examples import EvalPoint
  config = small_refiner_config()
  config.data.batch_size, config.refiner.num_keyframes = 2, 0
  geom, _ = derive(config)
  codecs, tokenizer = make_codecs(config)
  rng = np.random.default_rng(5)
  tok = tokenizer.batch(["a red ball", "rain"])
  batch = {"video": rng.uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32),
           "text_ids": tok["text_ids"], "text_mask": tok["text_mask"]}
  c, s = geom.video_channels, 0.6

  def run(start_t, at=None):
    config.refiner.start_t = start_t
    fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs,
                                              use_audio=False, at=at))
    return jax.tree.map(np.asarray, fn(batch, jax.random.key(0)))

  inputs, terms = run(s)
  assert terms["t"].min() >= s and terms["t"].max() <= 1.0
  full, full_terms = run(0.0, EvalPoint(0.0))
  eps = full["video"][..., :c]                 # t = 0: the noisy slot is the noise itself
  at_start, start_terms = run(s, EvalPoint(0.0))
  np.testing.assert_allclose(start_terms["t"], [s, s])
  cond = at_start["video"][..., c:2 * c]
  np.testing.assert_allclose(at_start["video"][..., :c], s * cond + (1 - s) * eps, atol=1e-5)
  z0 = start_terms["video_z0"]
  at_end, _ = run(s, EvalPoint(1.0))
  np.testing.assert_allclose(at_end["video"][..., :c], z0, atol=1e-5)
  # The velocity target z0 - e carries the model from the sampling start to the clip.
  np.testing.assert_allclose((1 - s) * (z0 - start_terms["video_eps"]),
                             z0 - at_start["video"][..., :c], atol=1e-5)


@pytest.mark.parametrize("field,value,expect", [
    ("scale", 3, "refiner.scale"),           # 64 does not divide by 3
    ("scale", 32, "refiner.scale"),          # low-res 2x2: below the AE's spatial factor 4
    ("scale", 0, "refiner.scale"),
    ("time_scale", 0, "refiner.time_scale"),
    ("time_scale", 5, "refiner.time_scale"),  # 7 low-res frames: the 2x temporal AE needs even
    ("num_keyframes", 33, "refiner.num_keyframes"),   # more than the clip's 32 frames
    ("noise_low", 1.0, "refiner.noise_low"),
    ("start_t", 1.0, "refiner.start_t"),
])
def test_config_errors_name_refiner_fields(field, value, expect):
  c = tiny_refiner.get_config()
  c.video_ae.temporal_factor = 2
  c.refiner[field] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert e.value.field == expect
