"""Sample-quality metrics (skyreels_jax/sample/metrics.py): AV-Align, the procedural set's
content scores, and the CLI on a folder of MP4s."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import synthetic
from skyreels_jax.data import shots as shots_lib
from skyreels_jax.sample import export, metrics, sync

FPS, SR = 8.0, 8000
GEOMETRY = dict(height=32, width=32, num_frames=16, fps=FPS, sample_rate=SR, channels=1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bouncing(seed):
  return synthetic.make_clip(np.random.default_rng([7, seed]), **GEOMETRY)


def tones(frames, num_frames=16):
  """An 80 ms decaying 660 Hz tone starting at each frame's time."""
  audio = np.zeros(int(num_frames / FPS * SR), np.float32)
  k = np.arange(int(0.08 * SR))
  tone = 0.3 * np.sin(2 * np.pi * 660 * k / SR) * np.exp(-k / (0.02 * SR))
  for f in frames:
    seg = audio[int(f / FPS * SR):][:tone.size]
    seg += tone[:seg.size]
  return audio


def strike(seed, num_frames=16):
  """A red square that rests and jumps to a new place on three frames, a tone at each jump:
  events that are motion peaks, what AV-Align looks for (a drum hit, a door slam)."""
  rng = np.random.default_rng(seed)
  while True:  # three jumps at least 3 frames apart, inside (a last frame is never a peak)
    jumps = np.sort(rng.choice(np.arange(2, num_frames - 2), 3, replace=False))
    if np.diff(jumps).min() >= 3:
      break
  video = np.full((num_frames, 32, 32, 3), 10, np.uint8)
  pos = rng.integers(0, 24, 2)
  for t in range(num_frames):
    if t in jumps:
      pos = rng.integers(0, 24, 2)
    video[t, pos[0]:pos[0] + 8, pos[1]:pos[1] + 8, 0] = 255
  return video, tones(jumps, num_frames), jumps / FPS


# ------------------------------------------------------------------------------ AV-Align

def test_matches_are_one_to_one_within_one_frame():
  w = 1 / FPS
  assert metrics.count_matches([0.1, 0.12], [0.1], w) == 1      # two onsets, one peak
  assert metrics.count_matches([0.0], [0.125], w) == 0           # exactly a frame: no match
  assert metrics.count_matches([0.0, 0.2, 0.4], [0.1, 0.3, 0.45], w) == 3
  assert metrics.count_matches([0.0, 0.1], [0.05, 0.2], w) == 2  # greedy, not nearest
  assert metrics.event_iou([0.1, 0.5], [0.12, 0.9], FPS) == pytest.approx(1 / 3)
  assert metrics.event_iou([0.1], [0.1], FPS) == 1.0
  assert metrics.event_iou([], [], FPS) == 0.0                    # nothing happens: no credit
  assert metrics.event_iou([0.1], [], FPS) == 0.0


def test_video_peaks_at_motion_bursts_and_onsets_at_tone_starts():
  video, audio, times = strike(3)
  np.testing.assert_allclose(metrics.video_peaks(video, FPS), times)
  onsets = metrics.audio_onsets(audio, SR)
  # Every tone start is found within librosa's ~23 ms hop (plus its spectral smearing).
  assert np.abs(onsets[:, None] - times[None]).min(axis=0).max() < 0.04
  assert metrics.audio_onsets(np.zeros(SR, np.float32), SR).size == 0
  still = np.repeat(video[:1], 16, axis=0)
  assert metrics.video_peaks(still, FPS).size == 0
  assert metrics.av_align(still, FPS, np.zeros(SR), SR) == 0.0


def test_av_align_ranks_own_sound_above_shuffled():
  clips = [strike(s) for s in range(10)]
  events = [(metrics.audio_onsets(a, SR), metrics.video_peaks(v, FPS)) for v, a, _ in clips]
  real = [metrics.event_iou(a, v, FPS) for a, v in events]
  shuffled = [metrics.event_iou(events[j][0], events[i][1], FPS)  # video i, sound j
              for i in range(10) for j in range(10) if i != j]
  assert metrics.av_align(clips[0][0], FPS, clips[0][1], SR) == real[0]
  assert np.mean(real) > 0.65 and min(real) >= 0.5, real   # measured 0.77 (extra onsets
  assert np.mean(shuffled) < 0.4, np.mean(shuffled)         # in tone tails); 0.29
  assert np.mean(real) > np.mean(shuffled) + 0.3


def test_bounces_are_flow_minima_as_the_docstring_says():
  """On the procedural set a bounce is a motion reversal: AV-Align does not rank real above
  shuffled there (module docstring), while sync_score does."""
  clips = [bouncing(s) for s in range(12)]
  av_real = [metrics.av_align(c["video"], FPS, c["audio"], SR) for c in clips]
  av_shuf = [metrics.av_align(c["video"], FPS, clips[(i + 1) % 12]["audio"], SR)
             for i, c in enumerate(clips)]
  sync_real = [sync.sync_score(c["video"], c["audio"], FPS, SR) for c in clips]
  sync_shuf = [sync.sync_score(c["video"], clips[(i + 1) % 12]["audio"], FPS, SR)
               for i, c in enumerate(clips)]
  assert np.mean(av_real) < np.mean(av_shuf) + 0.05, (av_real, av_shuf)
  assert np.mean(sync_real) > np.mean(sync_shuf) + 0.3, (sync_real, sync_shuf)


# ------------------------------------------------------------------- content scores

def test_prompt_objects_and_blob_shapes():
  caption = ("<text>a red circle, a Green square and a blue triangle bounce around a dark "
             "room</text><sfx>a low beep at every bounce</sfx>")
  assert metrics.prompt_objects(caption) == {("red", "circle"), ("green", "square"),
                                             ("blue", "triangle")}
  assert metrics.prompt_objects("<text>a dark room</text>") == frozenset()
  for half in (3.2, 4.5, 12.0):  # the smallest shape of a 32 px clip up to a large one
    n = int(2 * half) + 4
    ys, xs = np.arange(n)[:, None] + 0.5 - n / 2, np.arange(n)[None, :] + 0.5 - n / 2
    for kind in synthetic.KINDS:
      blob = synthetic._mask(kind, xs, ys, half)
      rows, cols = np.flatnonzero(blob.any(1)), np.flatnonzero(blob.any(0))
      crop = blob[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
      assert metrics.classify_blob(crop) == kind, (half, kind)
  sparse = np.zeros((8, 8), bool)
  sparse[::2, ::3] = True
  assert metrics.classify_blob(sparse) is None


def _recoloured(caption):
  """The caption with its first shape in a colour the clip does not show."""
  colour, kind = metrics._MENTION.findall(caption)[0]
  free = [c for c in metrics.COLOURS if f"a {c} " not in caption]
  if not free:
    return None
  return caption.replace(f"a {colour} {kind}", f"a {free[0]} {kind}", 1)


def _reshaped(caption):
  """The caption with its first shape of another kind."""
  colour, kind = metrics._MENTION.findall(caption)[0]
  other = [k for k in metrics.SHAPES if k != kind][0]
  return caption.replace(f"a {colour} {kind}", f"a {colour} {other}", 1)


def test_adherence_of_multi_shot_clips_is_shot_by_shot():
  """A 2-shot clip against its shot-tagged caption: each frame against its shot's shapes;
  the same shots swapped in time fail (the shots share no colour)."""
  clips = [synthetic.make_clip(np.random.default_rng([8, s]), **GEOMETRY, shots=2)
           for s in range(6)]
  tagged = [shots_lib.tagged_caption(c["caption"], c["shots"]) for c in clips]
  real = [metrics.content_scores(c["video"], p, c["fps"])["adherence"]
          for c, p in zip(clips, tagged)]
  swapped = []
  for c in clips:
    (a, b), duration = c["shots"], len(c["video"]) / c["fps"]
    moved = [dict(b, start=0.0, end=duration - a["end"]), dict(a, start=duration - a["end"],
                                                                end=duration)]
    swapped.append(metrics.content_scores(
        c["video"], shots_lib.tagged_caption(c["caption"], moved), c["fps"])["adherence"])
  assert np.mean(real) > 0.9 and np.mean(swapped) < 0.3, (real, swapped)
  # without the frame rate (or the tags) the whole clip is held to the joined caption
  assert metrics.content_scores(clips[0]["video"], tagged[0])["adherence"] < 0.3


def test_adherence_real_random_and_wrong_prompts():
  clips = [bouncing(s) for s in range(10)]
  real = [metrics.content_scores(c["video"], c["caption"])["adherence"] for c in clips]
  rng = np.random.default_rng(0)
  random = [metrics.content_scores(rng.integers(0, 256, c["video"].shape, dtype=np.uint8),
                                   c["caption"])["adherence"] for c in clips]
  reshaped = [metrics.content_scores(c["video"], _reshaped(c["caption"]))["adherence"]
              for c in clips]
  recoloured = [metrics.content_scores(c["video"], p)["adherence"] for c in clips
                if (p := _recoloured(c["caption"])) is not None]
  assert np.mean(real) > 0.95 and min(real) > 0.7, real    # measured 0.99
  assert np.mean(random) < 0.02, random                    # measured 0.0
  assert np.mean(reshaped) < 0.05 and max(reshaped) < 0.2, reshaped
  assert len(recoloured) >= 3 and max(recoloured) < 0.05, recoloured
  # A shape missing from the frames fails them as well.
  clip = next(c for c in clips if len(metrics.prompt_objects(c["caption"])) >= 2)
  dropped = clip["video"].copy()
  colour = sorted(metrics.prompt_objects(clip["caption"]))[0][0]
  dropped[..., metrics.COLOURS.index(colour)] = 5
  assert metrics.content_scores(dropped, clip["caption"])["adherence"] < 0.05


def test_colour_adherence_ignores_shapes_not_colours():
  clips = [bouncing(s) for s in range(10)]
  score = lambda video, prompt: metrics.content_scores(video, prompt)["colour_adherence"]
  real = [score(c["video"], c["caption"]) for c in clips]
  reshaped = [score(c["video"], _reshaped(c["caption"])) for c in clips]
  recoloured = [score(c["video"], p) for c in clips
                if (p := _recoloured(c["caption"])) is not None]
  assert np.mean(real) > 0.95, real
  assert np.mean(reshaped) > 0.95, reshaped        # the wrong shape, the right colours
  assert len(recoloured) >= 3 and max(recoloured) < 0.05, recoloured
  # Blocks of the right colour (what a coarse model draws) pass; their shape does not.
  clip = next(c for c in clips if len(metrics.prompt_objects(c["caption"])) == 1)
  (colour, _), = metrics.prompt_objects(clip["caption"])
  blocks = np.full_like(clip["video"], 10)
  blocks[:, 4:20, 8:16, metrics.COLOURS.index(colour)] = 255
  blocks[:, 12:20, 16:24, metrics.COLOURS.index(colour)] = 255
  out = metrics.content_scores(blocks, clip["caption"])
  assert out["colour_adherence"] == 1.0, out


def test_cleanliness_real_noisy_and_random():
  clips = [bouncing(s) for s in range(6)]
  rng = np.random.default_rng(1)
  scores = {"real": [], "speckled": [], "random": []}
  for c in clips:
    speckle = rng.normal(0, 6, c["video"].shape)
    noisy = np.clip(c["video"] + speckle * (c["video"] < 128), 0, 255).astype(np.uint8)
    uniform = rng.integers(0, 256, c["video"].shape, dtype=np.uint8)
    for name, video in (("real", c["video"]), ("speckled", noisy), ("random", uniform)):
      scores[name].append(metrics.content_scores(video, c["caption"]))
  mean = {n: {k: np.mean([r[k] for r in rows]) for k in rows[0]} for n, rows in scores.items()}
  assert mean["real"]["cleanliness"] > 0.99 and mean["real"]["background_mad"] < 0.5, mean
  assert 0.5 < mean["speckled"]["cleanliness"] < 0.99, mean    # |N(0, 6)| > 10 on ~10% / ch
  assert 2.0 < mean["speckled"]["background_mad"] < 6.0, mean
  assert mean["random"]["cleanliness"] < 0.01 and mean["random"]["background_mad"] > 40, mean
  # Speckle leaves the shapes alone: adherence holds.
  assert mean["speckled"]["adherence"] > 0.9, mean


def test_unscaled_undoes_the_export_upscale():
  video = bouncing(0)["video"]
  big = video.repeat(4, axis=1).repeat(4, axis=2)
  np.testing.assert_array_equal(metrics._unscaled(big, [32, 32]), video)
  assert metrics._unscaled(big, None) is big


# ------------------------------------------------------------------------------- CLI

def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "skyreels_jax.sample.metrics", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(tmp_path):
  reference = tmp_path / "records"
  synthetic.write_dataset(str(reference), num_clips=8, seed=0, clips_per_shard=4, **GEOMETRY)
  samples = tmp_path / "samples"
  samples.mkdir()
  for i in range(3):  # "samples" that are clips of another seed: scores near the ceiling
    clip = bouncing(100 + i)
    export.write_mp4(samples / f"sample_{i}.mp4", clip["video"], FPS, clip["audio"], SR)
    (samples / f"sample_{i}.json").write_text(json.dumps(
        dict(prompt=clip["caption"], fps=FPS, size=[32, 32])))
  proc = _cli(f"--samples={samples}", f"--reference={reference}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  out = json.loads(lines[0])
  keys = {"num_samples", "num_reference", "av_align", "av_align_real", "av_align_shuffled"}
  for k in ("adherence", "colour_adherence", "cleanliness", "background_mad"):
    keys |= {k, k + "_real", k + "_random"}
  keys |= {"sync_score", "sync_score_real", "sync_score_shuffled"}
  assert set(out) == keys, sorted(out)
  assert out["num_samples"] == 3 and out["num_reference"] == 8
  assert 0.0 <= out["av_align"] <= 1.0
  # Through H.264 (4x upscaled, crf 18) and back, real clips keep their shapes and background.
  assert out["adherence"] > 0.85 and out["adherence_real"] > 0.95, out
  assert out["adherence_random"] < 0.02 and out["cleanliness_random"] < 0.01, out
  assert out["cleanliness"] > 0.95 and out["cleanliness_real"] > 0.99, out
  assert out["sync_score_real"] > out["sync_score_shuffled"] + 0.1, out  # 0.93 / 0.73

  # Without --reference: AV-Align alone.
  proc = _cli(f"--samples={samples}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert set(json.loads(proc.stdout)) == {"num_samples", "av_align"}


def test_unusable_folders_are_named(tmp_path):
  empty, junk, sounds = tmp_path / "empty", tmp_path / "junk", tmp_path / "sounds"
  empty.mkdir()
  junk.mkdir()
  (junk / "sample_0.mp4").write_bytes(b"not a video")
  (junk / "shard.array_record").write_bytes(b"not a shard")
  synthetic.write_dataset(str(sounds), num_clips=2, seed=0, kind="audio", **GEOMETRY)
  cases = [(metrics.read_samples, tmp_path / "missing", "no such folder"),
           (metrics.read_samples, empty, "no .mp4 files"),
           (metrics.read_samples, junk, "sample_0.mp4: cannot decode"),
           (metrics.reference_shards, tmp_path / "missing", "no such folder"),
           (metrics.reference_shards, empty, "no *.array_record shards"),
           (lambda p: metrics.read_reference(p, 4), junk, "not an ArrayRecord shard"),
           (lambda p: metrics.read_reference(p, 4), sounds, "no video clips")]
  for read, path, message in cases:
    with pytest.raises(metrics.InputError, match=re.escape(message)):
      read(str(path))
  clip = bouncing(0)
  unprompted = dict(video=clip["video"], audio=clip["audio"], fps=FPS, sample_rate=SR,
                    prompt=None)
  with pytest.raises(metrics.InputError, match="no sample has a prompt"):
    metrics.report([unprompted], [clip], procedural=True)


def test_cli_usage_errors_exit_2_with_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "x.array_record").write_bytes(b"not a shard")
  samples = tmp_path / "samples"
  samples.mkdir()
  clip = bouncing(0)
  export.write_mp4(samples / "sample_0.mp4", clip["video"], FPS, clip["audio"], SR)
  for args, message in [((f"--samples={empty}",), "no .mp4 files"),
                        ((f"--samples={samples}", f"--reference={empty}"),
                         "not an ArrayRecord shard")]:
    proc = _cli(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert proc.stdout == ""


def test_shot_order_scores_read_each_half():
  dark = np.full((8, 16, 16, 3), 10, np.uint8)
  red_blue = dark.copy()
  red_blue[:4, 4:10, 4:10, 0] = 255
  red_blue[4:, 6:12, 6:12, 2] = 255
  assert metrics.dominant_colour(red_blue[:4]) == 0
  assert metrics.shot_order_scores([red_blue], [(0, 2)]) == (1.0, 0.0)
  assert metrics.shot_order_scores([red_blue, red_blue], [(0, 2), (2, 0)]) == (0.5, 0.5)
  assert metrics.shot_order_scores([red_blue[::-1]], [(0, 2)]) == (0.0, 1.0)
