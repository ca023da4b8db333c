"""Multi-shot ingestion: cuts detected on a real (PyAV-written) video with hard cuts, clips
planned around them, shot captions moved onto each clip's timeline."""

import json

import numpy as np
import pytest

from data_pipelines import build_records, cuts
from skyreels_jax.data import records
from media_files import small_data_config

FPS = 8
SHOT_FRAMES = (14, 11, 20, 9)                  # cuts at 14, 25 and 45 of 54 frames
CUTS = list(np.cumsum(SHOT_FRAMES)[:-1])
# (background, shape colour) of each scene: a hard cut changes every pixel's colour.
SCENES = (((20, 30, 120), (255, 255, 255)), ((230, 210, 40), (10, 10, 10)),
          ((30, 140, 40), (250, 60, 60)), ((120, 20, 120), (240, 240, 90)))


def write_shots_video(path, size=32):
  """An H.264 MP4 of len(SHOT_FRAMES) scenes, a square drifting across each."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=FPS)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for frames, (bg, fg) in zip(SHOT_FRAMES, SCENES):
      for i in range(frames):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = bg
        x = 2 + i % (size // 2)
        img[10:18, x:x + 8] = fg
        out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
    out.mux(stream.encode())


def _shots_json():
  edges = np.concatenate([[0], np.cumsum(SHOT_FRAMES)]) / FPS
  return [dict(start=float(a), end=float(b), text=f"scene {i}", sfx=f"sound {i}")
          for i, (a, b) in enumerate(zip(edges, edges[1:]))]


def _clips(out):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  found = []
  for path in sorted((out).glob("*/chunk-*.array_record")):
    reader = array_record_module.ArrayRecordReader(str(path))
    found += [records.decode_clip(d) for d in reader.read(list(range(reader.num_records())))]
    reader.close()
  return sorted(found, key=lambda c: float(c["source"].split("@")[1]))


def test_cuts_are_detected_within_one_frame(tmp_path):
  import av  # pylint: disable=g-import-not-at-top
  write_shots_video(tmp_path / "v.mp4")
  with av.open(str(tmp_path / "v.mp4")) as f:
    frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
  found = cuts.detect_cuts(frames, FPS)
  assert len(found) == len(CUTS)
  assert all(abs(a - b) <= 1 for a, b in zip(found, CUTS)), (found, CUTS)


def test_plan_respects_max_shots_and_margin():
  assert cuts.plan_clips(20, [], [8]) == [(0, 8), (8, 8)]
  assert cuts.plan_clips(23, [], [4, 8]) == [(0, 8), (8, 8), (16, 4)]
  for max_shots, margin in ((1, 0), (1, 3), (2, 2), (3, 4)):
    spans = cuts.plan_clips(54, CUTS, [8, 16], max_shots=max_shots, margin=margin)
    assert spans
    for start, length in spans:
      inside = [c for c in CUTS if start < c < start + length]
      assert len(inside) <= max_shots - 1
      assert all(c - start >= margin and start + length - c >= margin for c in inside)
  # one shot per clip: clips start at cuts once the first shot is used up
  assert cuts.plan_clips(54, CUTS, [8, 16], max_shots=1) == [(0, 8), (14, 8), (25, 16),
                                                                 (45, 8)]


@pytest.mark.parametrize("max_shots", [1, 2])
def test_build_records_cuts_and_shot_captions(tmp_path, max_shots):
  src = tmp_path / "src"
  src.mkdir()
  write_shots_video(src / "film.mp4")
  (src / "film.txt").write_text("a short film")
  (src / "film.shots.json").write_text(json.dumps(_shots_json()))
  write_shots_video(src / "nocaps.mp4")     # cuts, but no shot captions
  config = small_data_config(cut_threshold=27.0, max_shots_per_clip=max_shots,
                             shot_margin_seconds=0.5, durations=(1.0, 2.0),
                             resolutions=((16, 16),))
  index = build_records.build(str(src), str(tmp_path / "out"), config)
  assert index["shots"] == dict(multi_shot_videos=2, without_shot_captions=1,
                                without_shot_captions_files=["nocaps.mp4"])
  clips = _clips(tmp_path / "out")
  film = [c for c in clips if c["source"].startswith("film")]
  nocaps = [c for c in clips if c["source"].startswith("nocaps")]
  assert film and len(nocaps) == len(film)
  margin = 4                                   # 0.5 s at 8 fps
  for c in nocaps:
    assert c["caption"] == "" and c["shots"] is None
  for c in film:
    start = round(float(c["source"].split("@")[1]) * FPS)
    length = len(c["video"])
    inside = [k for k in CUTS if start < k < start + length]
    assert len(inside) <= max_shots - 1
    assert all(k - start >= margin and start + length - k >= margin for k in inside)
    # the captions of the scenes the clip spans, on its own timeline
    expected = [dict(s, start=max(s["start"] * FPS, start) / FPS - start / FPS,
                     end=min(s["end"] * FPS, start + length) / FPS - start / FPS)
                for s in _shots_json() if s["end"] * FPS > start and s["start"] * FPS <
                start + length]
    assert [(s["text"], s["sfx"]) for s in c["shots"]] == [(s["text"], s["sfx"])
                                                           for s in expected]
    np.testing.assert_allclose([(s["start"], s["end"]) for s in c["shots"]],
                               [(s["start"], s["end"]) for s in expected], atol=1e-5)
    assert c["caption"] == "<text>a short film</text>"
    # the pixels agree: each shot's frames show its scene's background
    for s, scene in zip(c["shots"], [int(x["text"].split()[1]) for x in c["shots"]]):
      f0, f1 = round(s["start"] * FPS), round(s["end"] * FPS)
      corner = c["video"][f0:f1, 0, 0].astype(int)
      assert np.abs(corner - SCENES[scene][0]).max() < 40, (scene, corner)


def test_bad_shots_sidecar_skips_the_video_with_its_reason(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  write_shots_video(src / "film.mp4")
  (src / "film.shots.json").write_text(json.dumps([dict(start=0, end=99, text="too long")]))
  (src / "orphan.shots.json").write_text("[]")
  index = build_records.build(str(src), str(tmp_path / "out"),
                              small_data_config(resolutions=((16, 16),)))
  assert index["inputs"]["used"] == 0
  skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").open()]
  reasons = {s["path"]: s["reason"] for s in skipped}
  assert "past the clip" in reasons["film.mp4"]
  assert "no media file" in reasons["orphan.shots.json"]
