"""Synthetic bouncing-shapes clips: determinism, geometry, and audio that matches the video."""

import json
import os
import re
import subprocess
import sys

from array_record.python import array_record_module
import numpy as np

from configs import tiny
import pytest

from data_pipelines import synthetic
from skyreels_jax.data import records

GEOMETRY = dict(height=32, width=32, num_frames=16, fps=8.0, sample_rate=16000, channels=1)
CAPTION = re.compile(r"<text>(.+) bounces? around a dark room</text><sfx>(.+)</sfx>")
THING = re.compile(r"a (red|green|blue) (circle|square|triangle)")


def _clips(num, channels=1, start=0):
  geometry = dict(GEOMETRY, channels=channels)
  return [synthetic.make_clip(np.random.default_rng(i), **geometry)
          for i in range(start, start + num)]


def _things(caption):
  """[(colour, kind)] parsed from the caption's <text> tag."""
  match = CAPTION.fullmatch(caption)
  assert match, caption
  return THING.findall(match.group(1))


def test_make_clip_is_deterministic():
  a = synthetic.make_clip(np.random.default_rng(7), **GEOMETRY)
  b = synthetic.make_clip(np.random.default_rng(7), **GEOMETRY)
  c = synthetic.make_clip(np.random.default_rng(8), **GEOMETRY)
  for key in ("video", "audio", "bounces"):
    np.testing.assert_array_equal(a[key], b[key])
  assert a["caption"] == b["caption"]
  assert not np.array_equal(a["video"], c["video"])


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_dtypes_and_caption(channels):
  for clip in _clips(10, channels=channels):
    assert clip["video"].shape == (16, 32, 32, 3) and clip["video"].dtype == np.uint8
    assert clip["audio"].shape == (32000, channels) and clip["audio"].dtype == np.float32
    assert np.abs(clip["audio"]).max() <= 1.0
    assert clip["bounces"].dtype == np.float32 and clip["bounces"].ndim == 1
    assert np.all(np.diff(clip["bounces"]) >= 0)
    assert np.all((clip["bounces"] > 0) & (clip["bounces"] < 2.0))
    records.decode_clip(records.encode_clip(clip))  # a valid record
    things = _things(clip["caption"])
    colours = [synthetic.COLOURS.index(c) for c, _ in things]
    assert 1 <= len(things) <= 3 and len(set(colours)) == len(colours)
    # Colour channels without a shape show only the dark background; shapes are saturated.
    for c in range(3):
      if c in colours:
        assert clip["video"][..., c].max() == 255
      else:
        assert clip["video"][..., c].max() <= 20
    sfx = CAPTION.fullmatch(clip["caption"]).group(2)
    if len(clip["bounces"]):
      kinds = {k for _, k in things}
      for kind in synthetic.KINDS:
        assert (f"{synthetic.PITCH_WORD[kind]} beep" in sfx) == (kind in kinds)
    else:
      assert sfx == "silence"


def test_most_clips_bounce_and_frames_move():
  clips = _clips(100)
  assert sum(len(c["bounces"]) > 0 for c in clips) >= 95
  moving = []
  for clip in clips:
    diffs = np.abs(np.diff(clip["video"].astype(np.int32), axis=0)).sum(axis=(1, 2, 3))
    # A shape can bounce between two frames and land on the same pixels: rare, never twice.
    assert np.sum(diffs == 0) <= 1
    moving.append(diffs > 0)
  assert np.mean(moving) > 0.99


def _rms_envelope(audio, sample_rate, window_s=0.005):
  """RMS of the mono mix over non-overlapping windows; returns (window start times, rms)."""
  mono = audio.mean(axis=1)
  n = int(window_s * sample_rate)
  frames = mono[:len(mono) // n * n].reshape(-1, n)
  return np.arange(len(frames)) * window_s, np.sqrt((frames ** 2).mean(axis=1))


@pytest.mark.parametrize("channels", [1, 2])
def test_every_bounce_has_an_audio_onset_within_a_frame(channels):
  frame = 1 / GEOMETRY["fps"]
  checked = 0
  for clip in _clips(20, channels=channels):
    times, rms = _rms_envelope(clip["audio"], GEOMETRY["sample_rate"])
    bounces = clip["bounces"].astype(np.float64)
    for tb in bounces:
      if tb > 2.0 - 0.01:
        continue  # the tone would be cut by the end of the clip
      near = (times >= tb - 0.005) & (times < tb + frame)
      assert rms[near].max() > 0.05, (clip["caption"], tb)
      # The onset: the first window at or after the bounce above half the peak.
      onset = times[near][np.argmax(rms[near] > 0.5 * rms[near].max())]
      assert abs(onset - tb) < frame
      checked += 1
    # Silence everywhere no tone can be sounding (no bounce in the last 85 ms).
    sounding = np.zeros_like(times, bool)
    for tb in bounces:
      sounding |= (times + 0.005 > tb) & (times < tb + synthetic.TONE_SECONDS + 0.005)
    assert np.all(rms[~sounding] < 1e-6)
  assert checked >= 50


def _peak_hz(audio, start, sample_rate):
  seg = audio[int(np.ceil(start * sample_rate)):][:int(0.06 * sample_rate)].mean(axis=1)
  spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=1 << 16))
  return np.argmax(spectrum) * sample_rate / (1 << 16)


def test_tone_pitch_matches_shape():
  single, multi = 0, 0
  for clip in _clips(60):
    kinds = {k for _, k in _things(clip["caption"])}
    bounces = clip["bounces"].astype(np.float64)
    for i, tb in enumerate(bounces):
      others = np.delete(bounces, i)
      if tb > 1.9 or np.any(np.abs(others - tb) < 0.1):
        continue  # overlapping or cut tones
      peak = _peak_hz(clip["audio"], tb, GEOMETRY["sample_rate"])
      nearest = min(synthetic.PITCH_HZ.values(), key=lambda f: abs(f - peak))
      assert abs(peak - nearest) < 10, peak
      kind = [k for k, f in synthetic.PITCH_HZ.items() if f == nearest][0]
      assert kind in kinds, (clip["caption"], peak)
      if len(kinds) == 1:
        single += 1
      else:
        multi += 1
  assert single >= 20 and multi >= 20


def test_stereo_pan_follows_horizontal_position():
  geometry = dict(GEOMETRY, channels=2)
  left = right = 0
  for i in range(40):
    clip = synthetic.make_clip(np.random.default_rng(i), **geometry)
    if len(_things(clip["caption"])) != 1:
      continue
    for tb in clip["bounces"]:
      start = int(np.ceil(tb * 16000))
      seg = clip["audio"][start:start + 800]
      energy = (seg ** 2).sum(axis=0)
      # At a left/right wall bounce the shape touches that wall: the other side is quieter.
      if energy[0] > 4 * energy[1]:
        left += 1
      elif energy[1] > 4 * energy[0]:
        right += 1
  assert left >= 5 and right >= 5


def _read_all(paths):
  out = []
  for p in paths:
    reader = array_record_module.ArrayRecordReader(str(p))
    out += reader.read_all()
    reader.close()
  return out


def test_write_dataset(tmp_path):
  index = synthetic.write_dataset(str(tmp_path / "a"), num_clips=10, seed=3, clips_per_shard=4,
                                  **GEOMETRY)
  names = [f"synthetic-0000{i}-of-00003.array_record" for i in range(3)]
  assert [s["path"] for s in index["shards"]] == names
  assert [s["num_records"] for s in index["shards"]] == [4, 4, 2]
  assert index["schema_version"] == records.SCHEMA_VERSION and index["num_clips"] == 10
  with open(tmp_path / "a" / "index.json") as f:
    assert json.load(f) == index

  # Deterministic: same seed, same bytes; clip i does not depend on the shard size.
  synthetic.write_dataset(str(tmp_path / "b"), num_clips=10, seed=3, clips_per_shard=4,
                          **GEOMETRY)
  for name in names:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  synthetic.write_dataset(str(tmp_path / "c"), num_clips=10, seed=3, clips_per_shard=10,
                          **GEOMETRY)
  a = _read_all([tmp_path / "a" / n for n in names])
  c = _read_all([tmp_path / "c" / "synthetic-00000-of-00001.array_record"])
  assert a == c and len(a) == 10
  expected = synthetic.make_clip(np.random.default_rng([3, 5]), **GEOMETRY)
  np.testing.assert_array_equal(records.decode_clip(a[5])["video"], expected["video"])


def test_cli(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
      [sys.executable, "-m", "data_pipelines.synthetic", f"--out={tmp_path}", "--num_clips=3",
       "--seed=1", "--config.data.height=24", "--config.data.audio_channels=2"],
      cwd=repo, capture_output=True, text=True, check=True, timeout=60)
  assert out.stdout.startswith("wrote 3 clips") and len(out.stdout.strip().splitlines()) == 1
  index = json.loads((tmp_path / "index.json").read_text())
  tiny_data = tiny.get_config().data
  assert index["geometry"] == dict(height=24, width=32, num_frames=16, fps=8.0,
                                   sample_rate=tiny_data.sample_rate, channels=2)
  assert index["seed"] == 1


def test_edit_pairs_have_exact_ground_truth(tmp_path):
  """Outside the mask target and source are equal to the pixel; inside, the edited shape
  changed colour (to the instruction's) or vanished; recolours carry a still of it."""
  geometry = dict(height=32, width=32, num_frames=8, fps=8.0, sample_rate=8000, channels=1)
  plain = synthetic.make_clip(np.random.default_rng([0, 5]), **geometry)
  kinds = set()
  for s in range(12):
    clip = synthetic.make_clip(np.random.default_rng([0, s]), **geometry, edit=True)
    before = synthetic.make_clip(np.random.default_rng([0, s]), **geometry)
    np.testing.assert_array_equal(clip["source_video"], before["video"])  # the clip unedited
    inside = clip["mask"] == 0
    assert inside.any() and clip["mask"].dtype == np.uint8
    np.testing.assert_array_equal(clip["video"][~inside], clip["source_video"][~inside])
    words = clip["instruction"].split()
    old = synthetic.COLOURS.index(words[2])
    assert (clip["video"][inside][:, old] < 255).all()     # the old colour is gone
    if words[0] == "make":
      kinds.add("recolour")
      new = synthetic.COLOURS.index(words[-1])
      assert (clip["video"][inside][:, new] == 255).all()
      assert (clip["source_video"][inside][:, old] == 255).all()
      assert clip["references"].shape == (1, 32, 32, 3)
      assert (clip["references"][0, 16, 16, new] == 255)
      assert f"{words[-1]} {words[3]}" in clip["caption"]
    else:
      kinds.add("remove")
      assert clip["references"] is None and f"{words[2]} {words[3]}" not in clip["caption"]
    records.decode_clip(records.encode_clip(clip))     # a valid schema-3 record
  assert kinds == {"recolour", "remove"}
  np.testing.assert_array_equal(plain["video"], synthetic.make_clip(
      np.random.default_rng([0, 5]), **geometry)["video"])


def test_multi_shot_clips_have_exact_ground_truth(tmp_path):
  """--shots=2 (the CLI): each record holds 2 shots covering it; at the cut the scene changes
  to shapes of other colours and kinds, so each shot's frames show its caption's colours
  only, and its beeps have its shapes' pitches; a source's windows hold whole shots."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, "-m", "data_pipelines.synthetic", f"--out={tmp_path}",
                  "--num_clips=12", "--shots=2", "--clips_per_source=2",
                  "--config.data.sample_rate=16000"],
                 cwd=repo, capture_output=True, text=True, check=True, timeout=60)
  assert json.loads((tmp_path / "index.json").read_text())["shots"] == 2
  clips = [records.decode_clip(d) for d in _read_all(sorted(tmp_path.glob("*.array_record")))]
  assert len(clips) == 12
  fps, rate = clips[0]["fps"], clips[0]["sample_rate"]
  pitched = 0
  for clip in clips:
    shots = clip["shots"]
    duration = len(clip["video"]) / fps
    assert len(shots) == 2 and shots[0]["start"] == 0 and shots[-1]["end"] == duration
    assert shots[0]["end"] == shots[1]["start"] and 0 < shots[0]["end"] < duration
    assert clip["caption"] == (f"<text>{shots[0]['text']}, then {shots[1]['text']}</text>"
                               f"<sfx>{shots[0]['sfx']}, then {shots[1]['sfx']}</sfx>")
    things = [THING.findall(s["text"]) for s in shots]
    assert not {c for c, _ in things[0]} & {c for c, _ in things[1]}
    assert not {k for _, k in things[0]} & {k for _, k in things[1]}
    for s, seen in zip(shots, things):
      frames = clip["video"][round(s["start"] * fps):round(s["end"] * fps)]
      lit = {name for i, name in enumerate(synthetic.COLOURS)
             if (frames[..., i] > 128).any()}
      assert lit == {c for c, _ in seen}, (s, lit)
      for t in clip["bounces"][(clip["bounces"] >= s["start"])
                               & (clip["bounces"] < s["end"] - 0.07)]:
        hz = _peak_hz(clip["audio"], t, rate)
        pitched += 1
        assert min(abs(hz - synthetic.PITCH_HZ[k]) for _, k in seen) < 20, (hz, seen)
  assert pitched >= 20
