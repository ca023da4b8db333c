"""RoPE (skyreels_jax/models/rope.py): relative positions, one audio-video timeline,
negative reference times, rotations."""

import numpy as np
import pytest

from configs import tiny
from skyreels_jax.config import derive
from skyreels_jax.models.rope import (apply_rope, audio_positions, audio_time_scale,
                                      rope_cos_sin, video_positions)


def scores(q, k, positions, axes_dim, theta):
  """q.k after RoPE, (H, Sq, Sk); q and k share the positions."""
  cos, sin = rope_cos_sin(positions, axes_dim, theta)
  qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  return np.einsum("bqhd,bkhd->hqk", np.asarray(qr), np.asarray(kr))


def random_qk(seq, dim, heads=2, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(1, seq, heads, dim)).astype(np.float32)
  k = rng.normal(size=(1, seq, heads, dim)).astype(np.float32)
  return q, k


@pytest.mark.parametrize("shift", [(3.0, -2.0, 5.0), (-7.0, 0.0, 1.0)])
def test_video_scores_depend_only_on_position_difference(shift):
  axes, theta = (4, 6, 6), 256.0
  pos = video_positions((3, 2, 2), num_ref_frames=1)      # includes negative times
  q, k = random_qk(len(pos), sum(axes))
  base = scores(q, k, pos, axes, theta)
  shifted = scores(q, k, pos + np.asarray(shift, np.float32), axes, theta)
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)
  # The test can fail: a non-uniform change of positions does change the scores.
  stretched = scores(q, k, pos * np.asarray([2.0, 1.0, 1.0], np.float32), axes, theta)
  assert np.abs(stretched - base).max() > 1e-2


@pytest.mark.parametrize("shift", [4.0, 0.37, -2.613])
def test_audio_scores_depend_only_on_position_difference(shift):
  dim, theta = 16, 10000.0
  pos = audio_positions(10, time_scale=21 / 218, num_ref_tokens=3)  # fractional positions
  q, k = random_qk(len(pos), dim, seed=1)
  base = scores(q, k, pos, (dim,), theta)
  np.testing.assert_allclose(scores(q, k, pos + shift, (dim,), theta), base,
                             rtol=1e-4, atol=1e-4)
  assert np.abs(scores(q, k, pos * 3.0, (dim,), theta) - base).max() > 1e-2


def test_rope_is_a_rotation():
  pos = video_positions((2, 3, 2))
  axes = (4, 6, 6)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, len(pos), 3, sum(axes))).astype(np.float32)
  cos, sin = rope_cos_sin(pos, axes, 256.0)
  y = np.asarray(apply_rope(x, cos, sin))
  # Every interleaved pair keeps its norm...
  pair_norm = lambda a: np.linalg.norm(a.reshape(*a.shape[:-1], -1, 2), axis=-1)
  np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-5, atol=1e-6)
  # ...position 0 is the identity, and other positions do rotate.
  np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)
  assert np.abs(y[:, 1:] - x[:, 1:]).max() > 0.1
  # Pair (x0, x1) at angle a becomes (x0 cos a - x1 sin a, x1 cos a + x0 sin a).
  a = 1.0 * 1.0  # axis t, first frequency (inv_freq = 1), token t = 1 sits at rows h*w
  row = 3 * 2
  x0, x1 = x[0, row, 0, 0], x[0, row, 0, 1]
  np.testing.assert_allclose(y[0, row, 0, :2],
                             [x0 * np.cos(a) - x1 * np.sin(a), x1 * np.cos(a) + x0 * np.sin(a)],
                             rtol=1e-5)


def test_reference_frames_get_negative_times_and_the_target_grid():
  grid, n_ref = (3, 2, 4), 2
  pos = video_positions(grid, n_ref)
  hw = grid[1] * grid[2]
  assert pos.shape == ((grid[0] + n_ref) * hw, 3)
  np.testing.assert_array_equal(pos[:, 0], np.repeat(np.arange(-n_ref, grid[0]), hw))
  target = video_positions(grid)
  np.testing.assert_array_equal(pos[n_ref * hw:], target)
  for r in range(n_ref):
    np.testing.assert_array_equal(pos[r * hw:(r + 1) * hw, 1:], target[:hw, 1:])
  a = audio_positions(4, time_scale=0.5, num_ref_tokens=2)
  np.testing.assert_allclose(a[:, 0], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])


def test_paper_rates_put_audio_and_video_on_one_timeline():
  fps, factor, sr, hop = 16.0, 4, 44100, 1024
  scale = audio_time_scale(fps=fps, video_temporal_factor=factor, patch_size_t=1,
                           sample_rate=sr, audio_hop=hop, audio_patch_size=1)
  # video token rate / audio token rate = 4 / (44100 / 1024) ~ 21 / 218 (the paper's 5 s).
  np.testing.assert_allclose(scale, 4.0 / (44100 / 1024), rtol=1e-6)
  assert abs(scale - 21 / 218) / (21 / 218) < 0.05
  # Audio token j starts at j * hop / sr seconds; the video latent at time tau sits at
  # tau * fps / factor. Same moment -> same position.
  audio = audio_positions(300, scale)[:, 0]
  for j in (0, 43, 100, 218, 299):
    tau = j * hop / sr
    np.testing.assert_allclose(audio[j], tau * fps / factor, rtol=1e-5)
  # 5 s: the last of 218 audio tokens lands next to the 21st video latent.
  np.testing.assert_allclose(audio[217], 217 * 1024 / 44100 * 4, rtol=1e-5)
  assert 20.0 < audio[217] < 21.0
  # With a temporal patch of 2 the video token rate halves, and so does the scale.
  scale2 = audio_time_scale(fps=fps, video_temporal_factor=factor, patch_size_t=2,
                            sample_rate=sr, audio_hop=hop, audio_patch_size=1)
  np.testing.assert_allclose(scale2, scale / 2, rtol=1e-6)


def test_tiny_config_timeline_and_rotations_coincide():
  config = tiny.get_config()
  geom, mcfg = derive(config)
  # 8 fps video, 8 kHz audio framed by 160 samples: 50 audio tokens/s -> scale 8/50.
  np.testing.assert_allclose(mcfg.audio_time_scale, 8.0 / 50.0, rtol=1e-6)
  a = audio_positions(geom.audio_tokens, mcfg.audio_time_scale)
  v = video_positions(geom.video_grid[:1] + (1, 1))   # one token per frame
  # Audio token 25 (0.5 s) and video frame 4 (0.5 s): same position, same rotation in the
  # audio<->video cross-attention (1D RoPE over the whole head dim, as in mmdit.py).
  np.testing.assert_allclose(a[25, 0], v[4, 0], rtol=1e-6)
  hd = mcfg.head_dim
  ca, sa = rope_cos_sin(a, (hd,), mcfg.audio_rope_theta)
  cv, sv = rope_cos_sin(v[:, :1], (hd,), mcfg.audio_rope_theta)
  for j, i in ((0, 0), (25, 4), (50, 8), (75, 12)):
    np.testing.assert_allclose(ca[j], cv[i], atol=1e-5)
    np.testing.assert_allclose(sa[j], sv[i], atol=1e-5)
  assert np.abs(np.asarray(ca[26]) - np.asarray(cv[4])).max() > 1e-3
