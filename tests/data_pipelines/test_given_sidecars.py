"""Masks, references and edit pairs from disk: sidecars and manifest columns through
build_records (data_pipelines/sidecars.py) into records and the loader's batches."""

import json

import av
import grain
import numpy as np
import pytest
from PIL import Image, ImageOps

from data_pipelines import build_records
from skyreels_jax.data import loader, records

from media_files import read_json, red_level, small_data_config, write_video


def _write_mask_video(path, frames):
  """Lossless H.264 (qp 0, 4:4:4): the mask's grey levels survive the codec."""
  with av.open(str(path), "w") as out:
    s = out.add_stream("libx264", rate=16)
    s.height, s.width = frames.shape[1:3]
    s.pix_fmt, s.options = "yuv444p", {"qp": "0"}
    for f in frames:
      out.mux(s.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1),
                                                  format="rgb24")))
    out.mux(s.encode())


def _moving_box(num_frames, height=48, width=64):
  """White (regenerate) box moving 3 pixels a frame: every source frame differs."""
  m = np.zeros((num_frames, height, width), np.uint8)
  for t in range(num_frames):
    m[t, 10:30, 4 + 3 * t % 40:16 + 3 * t % 40] = 255
  return m


def _fit(gray, size):
  h, w = size
  return np.asarray(ImageOps.fit(Image.fromarray(gray), (w, h),
                                 method=Image.Resampling.BICUBIC))


def _all(out):
  found = {}
  for name, entry in read_json(out / "index.json")["buckets"].items():
    src = grain.sources.ArrayRecordDataSource([str(out / s["path"]) for s in entry["shards"]])
    found[name] = [records.decode_clip(src[i]) for i in range(len(src))]
  return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A 16 fps video with a per-frame mask MP4 (resampled to 8 fps, cropped 64x48 -> 24x16),
  a video with a static PNG mask and two reference stills, bad masks, an orphan."""
  src = tmp_path_factory.mktemp("given")
  write_video(src / "clip.mp4", width=64, height=48, fps=16, seconds=2.5, audio_rate=44100)
  box = _moving_box(40)
  _write_mask_video(src / "clip.mask.mp4", box)
  write_video(src / "still.mp4", width=48, height=48, fps=8, seconds=1.0)
  static = np.zeros((48, 48), np.uint8)
  static[:, 24:] = 255
  Image.fromarray(static).save(src / "still.mask.png")
  for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
    Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(src / f"still.ref{i}.png")
  write_video(src / "small.mp4", width=64, height=48, fps=16, seconds=1.0)
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(src / "small.mask.png")   # wrong size
  write_video(src / "short.mp4", width=64, height=48, fps=16, seconds=1.5)
  _write_mask_video(src / "short.mask.mp4", _moving_box(16))                 # wrong length
  Image.fromarray(static).save(src / "gone.mask.png")                         # no input
  out = tmp_path_factory.mktemp("given_records")
  index = build_records.build(str(src), str(out), small_data_config())
  return src, out, index, box


def test_mask_round_trip_with_crop_and_frame_rate_change(built):
  """Records -> loader batch: each clip's mask is the sidecar's source frames 2k (16 -> 8
  fps), centre-cropped and resized as the video (64x48 -> 24x16), binarised (1 = keep),
  cut at the clip's start: exactly."""
  _, out, _, box = built
  clips = [c for c in _all(out)["16x24x8"] if c["source"].startswith("clip.mp4")]
  assert [c["source"] for c in clips] == ["clip.mp4@0.000", "clip.mp4@1.000"]
  want = {}
  for c in clips:
    first = int(round(float(c["source"].split("@")[1]) * 8))
    frames = [2 * (first + k) for k in range(8)]
    expected = np.stack([_fit(box[f], (16, 24)) <= 127 for f in frames]).astype(np.uint8)
    np.testing.assert_array_equal(c["mask"], expected)
    # The mask moved with the frames: the video's own frames are 2k (red level).
    np.testing.assert_allclose(c["video"][:, 12, 20, 0].astype(float),
                               [red_level(f) for f in frames], atol=6)
    want[c["source"]] = expected
  assert 0 < np.mean(list(want.values())) < 1

  data = small_data_config(path=str(out), shuffle=False, batch_size=2)
  data.tasks.inpaint_given = 1.0
  it = loader.make_iterator(data, tokenizer=lambda s: {"text_ids": np.zeros(4, np.int32)},
                            global_batch_size=2, seed=0)
  seen = {}
  for _ in range(4):
    batch = next(it)
    if batch["video"].shape[2:4] != (16, 24):
      continue
    for b in range(2):
      if batch["has_mask"][b] and batch["given_mask"][b].mean() < 1:
        seen[len(seen)] = batch["given_mask"][b]
  got = sorted(want.values(), key=lambda m: m.sum())
  assert len(seen) >= 2
  for m in seen.values():
    assert any(np.array_equal(m, w.astype(np.float32)) for w in got)


def test_static_png_mask_and_reference_stills(built):
  _, out, _, _ = built
  clip = next(c for c in _all(out)["16x16x8"] if c["source"].startswith("still.mp4"))
  assert clip["mask"].shape == (1, 16, 16)
  np.testing.assert_array_equal(clip["mask"][0, :, :8], 1)     # black half kept
  np.testing.assert_array_equal(clip["mask"][0, :, 8:], 0)     # white half regenerated
  refs = clip["references"]
  assert refs.shape == (2, 16, 16, 3)                          # name order: ref0, ref1
  assert refs[0, ..., 0].min() > 240 and refs[1, ..., 2].min() > 240


def test_bad_masks_and_orphans_are_skipped_with_reasons(built):
  _, out, index, _ = built
  skipped = {json.loads(l)["path"]: json.loads(l)["reason"]
             for l in (out / "skipped.jsonl").read_text().splitlines()}
  assert "24x32" in skipped["small.mp4"] and "48x64" in skipped["small.mp4"]
  assert "16 frames" in skipped["short.mp4"] and "24" in skipped["short.mp4"]
  assert "no media file" in skipped["gone.mask.png"]
  # Inputs: the four videos and the orphan; the sidecars of an input are not inputs.
  assert index["inputs"] == {"total": 5, "used": 2, "skipped": 3}


def test_manifest_edit_pair_with_instruction_and_audio_mask(tmp_path):
  write_video(tmp_path / "after.mp4", width=32, height=32, fps=8, seconds=1.0,
              audio_rate=8000, channels=1)
  write_video(tmp_path / "before.mp4", width=32, height=32, fps=8, seconds=1.0)
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m.png")
  rows = [dict(target="after.mp4", source_video="before.mp4", mask="m.png",
               instruction="make it blue", audio_mask="0.5:0.75", text="a clip")]
  (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  out = tmp_path / "out"
  build_records.build(str(tmp_path / "edits.jsonl"), str(out), small_data_config())
  (clip,) = _all(out)["16x16x8"]
  assert clip["instruction"] == "make it blue" and clip["caption"] == "<text>a clip</text>"
  assert clip["source_video"].shape == clip["video"].shape
  np.testing.assert_array_equal(clip["mask"], 1)
  t = np.arange(len(clip["audio_mask"])) / 8000
  np.testing.assert_array_equal(clip["audio_mask"], ~((t >= 0.5) & (t < 0.75)))
