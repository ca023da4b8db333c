"""Audio-video sync score on hand-made bouncing-square clips (skyreels_jax/sample/sync.py)."""

import numpy as np
import pytest

from skyreels_jax.sample import sync

FPS, SR, H, W = 8.0, 16000, 32, 32


def triangle(p, length):
  """Position of a point moving freely at p, reflected into [0, length]."""
  u = np.mod(p, 2 * length)
  return np.where(u <= length, u, 2 * length - u)


def render(shapes, num_frames, fps=FPS):
  """shapes: (channel, size, (y0, x0), (vy, vx) px/s). Returns video and bounce times (s)."""
  video = np.full((num_frames, H, W, 3), 16, np.uint8)
  duration = num_frames / fps
  bounces = []
  for channel, size, p0, vel in shapes:
    room = np.array([H - size, W - size], np.float64)
    p0, vel = np.asarray(p0, np.float64), np.asarray(vel, np.float64)
    for i in range(num_frames):
      y, x = np.round(triangle(p0 + vel * i / fps, room)).astype(int)
      video[i, y:y + size, x:x + size] = 16
      video[i, y:y + size, x:x + size, channel] = 230
    for axis in range(2):
      if vel[axis]:
        k = np.arange(-20, 21)
        t = (k * room[axis] - p0[axis]) / vel[axis]
        bounces.extend(t[(t > 0) & (t < duration)].tolist())
  return video, np.sort(np.array(bounces))


def tones(times, duration, sr=SR, freq=660.0, amp=0.5, channels=1):
  """An ~80 ms tone (2 ms attack, 20 ms exponential decay) starting at each time."""
  audio = np.zeros(round(duration * sr), np.float32)
  k = np.arange(round(0.08 * sr))
  tone = amp * np.sin(2 * np.pi * freq * k / sr) * np.exp(-k / (0.02 * sr))
  tone *= np.minimum(1.0, k / (0.002 * sr))
  for t in times:
    i = round(t * sr)
    seg = audio[i:i + tone.size]
    seg += tone[:seg.size]
  return np.repeat(audio[:, None], channels, axis=1)


def one_square(num_frames=32):
  # Horizontal only: 26 px of room at 26 px/s, so a bounce every second from 0.5 s on.
  return render([(0, 6, (10.0, 13.0), (0.0, 26.0))], num_frames)


def test_render_helper_bounces():
  _, bounces = one_square()
  np.testing.assert_allclose(bounces, [0.5, 1.5, 2.5, 3.5])


def test_audio_onsets_at_tone_starts():
  times = np.array([0.1234, 0.4019, 0.7771, 1.2003, 1.5557])
  for channels in (1, 2):
    audio = tones(times, 2.0, channels=channels)
    onsets = sync.audio_onset_times(audio, SR)
    assert onsets.shape == times.shape
    assert np.abs(onsets - times).max() < 0.010


def test_audio_onsets_quiet_tone_noise_and_refractory():
  rng = np.random.default_rng(0)
  times = np.array([0.2, 0.6, 1.0])
  audio = tones(times, 1.5)
  audio[round(0.6 * SR):] *= 0.35  # a softer tone among louder ones
  audio += rng.normal(0, 0.005, audio.shape).astype(np.float32)  # noise bed
  onsets = sync.audio_onset_times(audio, SR)
  assert onsets.shape == (3,)
  assert np.abs(onsets - times).max() < 0.010
  # Two tones 20 ms apart fall inside the 50 ms refractory period: one onset.
  assert sync.audio_onset_times(tones([0.30, 0.32], 1.0), SR).shape == (1,)


def test_no_onsets_in_silence_and_score_zero():
  video, _ = one_square()
  assert sync.audio_onset_times(np.zeros((SR, 1), np.float32), SR).size == 0
  assert sync.audio_onset_times(np.full((SR, 1), 1e-4, np.float32), SR).size == 0
  assert sync.audio_onset_times(np.zeros((0, 1), np.float32), SR).size == 0
  assert sync.sync_score(video, np.zeros((4 * SR, 1), np.float32), FPS, SR) == 0.0


def test_visual_bounces_of_one_square():
  video, bounces = one_square()
  seen = sync.visual_bounce_times(video, FPS)
  assert seen.shape == bounces.shape
  # The turn frame is within half a frame; the sub-frame refinement does much better.
  assert np.abs(seen - bounces).max() < 0.03


def test_visual_bounces_three_shapes_and_corners():
  shapes = [(0, 6, (3.0, 13.0), (0.0, 26.0)),
            (1, 5, (20.0, 4.0), (30.0, 0.0)),
            (2, 4, (0.0, 0.0), (28.0, 28.0))]  # blue hits the corners: x and y turn at once
  video, bounces = render(shapes, 32)
  seen = sync.visual_bounce_times(video, FPS)
  unique = np.unique(np.round(bounces, 6))  # a corner bounce counts once
  visible = unique[(unique >= 1 / FPS) & (unique <= 30 / FPS)]  # see observable_onsets
  assert seen.size == visible.size
  assert np.abs(seen - visible).max() < 1 / FPS


def test_blank_noise_and_short_video_no_crash():
  rng = np.random.default_rng(0)
  blank = np.zeros((16, H, W, 3), np.uint8)
  assert sync.visual_bounce_times(blank, FPS).size == 0
  noise = rng.integers(0, 256, (16, H, W, 3), dtype=np.uint8)
  assert sync.visual_bounce_times(noise, FPS).ndim == 1
  assert sync.visual_bounce_times(blank[:2], FPS).size == 0
  audio = tones([0.5, 1.0], 2.0)
  assert sync.sync_score(blank, audio, FPS, SR) == 0.0
  assert 0.0 <= sync.sync_score(noise, audio, FPS, SR) <= 1.0


def test_score_in_sync_vs_shifted_vs_random():
  video, bounces = one_square()
  duration = video.shape[0] / FPS
  assert sync.sync_score(video, tones(bounces, duration), FPS, SR) == 1.0
  # Half the bounce period (0.5 s) off: every onset is far from every bounce.
  assert sync.sync_score(video, tones(bounces + 0.5, duration), FPS, SR) == 0.0
  rng = np.random.default_rng(1)
  random_scores = [sync.sync_score(video, tones(rng.uniform(0.1, 3.7, 3), duration), FPS, SR)
                   for _ in range(10)]
  assert np.mean(random_scores) < 0.4


def test_score_separates_real_from_mismatched_pairs():
  # Real clips score ~1; video of clip i with audio of clip j scores far lower.
  rng = np.random.default_rng(0)
  clips = []
  for _ in range(6):
    shapes = [(c, int(rng.integers(4, 8)), rng.uniform(0, 24, 2),
               rng.uniform(15, 30, 2) * rng.choice([-1, 1], 2))
              for c in rng.permutation(3)[:rng.integers(1, 4)]]
    video, bounces = render(shapes, 16)
    clips.append((video, tones(bounces, 2.0)))
  real = sync.sync_report(clips, FPS, SR)
  mixed = sync.sync_report([(clips[i][0], clips[(i + 1) % 6][1]) for i in range(6)], FPS, SR)
  assert real["n"] == 6 and len(real["scores"]) == 6
  assert real["mean"] >= 0.95
  assert mixed["mean"] < real["mean"] - 0.3


def test_match_onsets_and_tolerance():
  np.testing.assert_array_equal(
      sync.match_onsets(np.array([0.1, 0.5, 0.9]), np.array([0.12, 0.7]), 0.05),
      [True, False, False])
  assert sync.match_onsets(np.array([0.1]), np.array([]), 1.0).tolist() == [False]
  video, bounces = one_square()
  late = tones(bounces + 0.1, 4.0)  # 100 ms late: inside one frame (125 ms + 20 ms) ...
  assert sync.sync_score(video, late, FPS, SR) == 1.0
  assert sync.sync_score(video, late, FPS, SR, tolerance=0.05) == 0.0  # ... not inside 50 ms


@pytest.mark.parametrize("sigma", [0.0, 12.0])
def test_noisy_blurry_video_keeps_bounces(sigma):
  video, bounces = one_square()
  rng = np.random.default_rng(0)
  x = video.astype(np.float32)
  x = (x + np.roll(x, 1, axis=2) + np.roll(x, -1, axis=2)) / 3  # horizontal blur
  x += rng.normal(0, sigma, x.shape)
  noisy = np.clip(x, 0, 255).astype(np.uint8)
  assert sync.sync_score(noisy, tones(bounces, 4.0), FPS, SR) == 1.0
  assert np.abs(sync.visual_bounce_times(noisy, FPS) - bounces).max() < 1 / FPS
