"""In-context references in training come from outside the target window
(skyreels_jax/data/references.py): another clip of the same source video, else the record's
own frames past the window; augmented; a corrupt partner is reported and costs only the
reference."""

import os

from array_record.python import array_record_module
import numpy as np
import pytest

from configs import tiny
from data_pipelines import synthetic
from skyreels_jax.data import loader
from skyreels_jax.data import records
from skyreels_jax.data import references

from test_loader import WordHashTokenizer

FPS, SR, F, H = 8.0, 800, 4, 16      # target windows of 4 frames (0.5 s) at 16x16


def config(path, **refs):
  c = tiny.get_config()
  d = c.data
  d.path, d.fps, d.sample_rate, d.num_frames, d.height, d.width = path, FPS, SR, F, H, H
  d.refs = dict(none=0.2, image=0.4, video=0.4)
  d.ref_images, d.ref_video_frames, d.ref_crop_min = 2, 2, 0.5
  d.audio_ref_rate, d.audio_ref_seconds = 0.7, 0.125
  for k, v in refs.items():
    d[k] = v
  return d


def frame_id(pixels):
  """The source frame index painted in a (constant) frame: cropping, resizing and flipping
  a constant frame keep its value, so a reference says where it came from."""
  return int(round((float(pixels[..., 0].mean()) + 1) * 127.5)) // 2


def source_clip(video_id: int, start_frame: int, frames: int, *, corrupt=False):
  """Frames of source `video_id` from `start_frame`: frame g painted 2g (red), video_id * 40
  (green); the sound a ramp of the source time (sample s of the source: s / 10000)."""
  g = np.arange(start_frame, start_frame + frames)
  video = np.zeros((frames, H, H, 3), np.uint8)
  video[..., 0] = (2 * g)[:, None, None]
  video[..., 1] = video_id * 40
  s0 = int(start_frame / FPS * SR)
  audio = (np.arange(s0, s0 + int(frames / FPS * SR)) / 10000.0)[:, None].astype(np.float32)
  clip = dict(video=video, audio=audio, fps=FPS, sample_rate=SR, caption=f"video {video_id}",
              source=f"v{video_id}.mp4@{start_frame / FPS:.3f}")
  data = records.encode_clip(clip)
  return data[:40] if corrupt else data


def write(path, items, sources=None):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for item in items:
    writer.write(item)
  writer.close()
  if sources is not None:
    references.write_sidecar(str(path), sources)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """v0: 3 windows of one video; v1: one record twice the window (its tail is the only
  outside); v2: one window, nothing outside; v3: 2 windows, the second corrupt."""
  out = tmp_path_factory.mktemp("refs")
  items = [source_clip(0, 0, F), source_clip(0, F, F), source_clip(0, 2 * F, F),
           source_clip(1, 0, 2 * F), source_clip(2, 0, F), source_clip(3, 0, F),
           source_clip(3, F, F, corrupt=True)]
  sources = ["v0.mp4@0.000", "v0.mp4@0.500", "v0.mp4@1.000", "v1.mp4@0.000", "v2.mp4@0.000",
             "v3.mp4@0.000", "v3.mp4@0.500"]
  write(out / "a.array_record", items, sources)
  return out


def examples(d, n=120):
  it = iter(loader.make_dataset(d, tokenizer=WordHashTokenizer(), global_batch_size=1,
                                seed=0))
  return [{k: v[0] for k, v in next(it).items()} for _ in range(n)], it


def test_references_never_come_from_the_target_window(data_dir):
  exs, it = examples(config(str(data_dir)))
  kinds = {"image": 0, "video": 0, "none": 0, "audio": 0}
  for ex in exs:
    video = ex["video"].astype(np.float32) / 127.5 - 1.0   # uint8 on the wire
    vid = int(round((float(video[0, ..., 1].mean()) + 1) * 127.5)) // 40
    target = {frame_id(f) for f in video}
    start = min(target)
    assert target == set(range(start, start + F))
    used = []
    n = int(ex["ref_image_count"])
    if n:
      kinds["image"] += 1
      used += [ex["ref_images"][-n + i] for i in range(n)]
      assert not np.any(ex["ref_images"][:-n])              # right-aligned, zeros before
    if ex["has_ref_video"]:
      kinds["video"] += 1
      ids = [frame_id(f) for f in ex["ref_video"]]
      assert ids[1] == ids[0] + 1                            # a clip: consecutive frames
      used += list(ex["ref_video"])
    if not n and not ex["has_ref_video"]:
      kinds["none"] += 1
    for frame in used:
      assert frame_id(frame) not in target                  # never the target's frames
      green = int(round((float(frame[..., 1].mean()) + 1) * 127.5))
      assert green == vid * 40                              # and from the same video
    if ex["has_ref_audio"]:
      kinds["audio"] += 1
      t0, t1 = start / FPS, (start + F) / FPS
      times = ex["ref_audio"][:, 0] * 10000.0 / SR         # source seconds of each sample
      assert np.all((times < t0 - 1e-6) | (times >= t1 - 1e-6))
    if vid == 2:         # one window and nothing past it: no reference can be had
      assert not n and not ex["has_ref_video"] and not ex["has_ref_audio"]
  # Every kind happens; v3's corrupt window is skipped and counted, its partner trains on.
  assert min(kinds.values()) > 5, kinds
  assert loader.iterator_stats(it)["bad_records"] >= 1


def test_the_mix_is_the_configured_one_where_partners_exist(tmp_path):
  items = [source_clip(0, i * F, F) for i in range(4)]
  write(tmp_path / "a.array_record", items, [f"v0.mp4@{i * F / FPS:.3f}" for i in range(4)])
  exs, _ = examples(config(str(tmp_path), refs=dict(none=0.6, image=0.2, video=0.2),
                           audio_ref_rate=0.0), n=400)
  image = np.mean([int(e["ref_image_count"]) > 0 for e in exs])
  video = np.mean([bool(e["has_ref_video"]) for e in exs])
  assert abs(image - 0.2) < 0.06 and abs(video - 0.2) < 0.06
  assert not any(e["has_ref_audio"] for e in exs)


def test_sources_are_read_from_the_records_without_a_sidecar(data_dir, tmp_path):
  os.link(data_dir / "a.array_record", tmp_path / "a.array_record")
  shards = [str(tmp_path / "a.array_record")]
  import grain
  src = grain.sources.ArrayRecordDataSource(shards)
  with_sidecar = references.read_sources([str(data_dir / "a.array_record")], src)
  assert references.read_sources(shards, src) == with_sidecar[:-1] + [None]   # corrupt: None
  table = references.partner_table(with_sidecar, F / FPS)
  assert [list(t) for t in table] == [[1, 2], [0, 2], [0, 1], [], [], [6], [5]]


def test_augmentation_crops_scales_and_flips():
  sampler = references.ReferenceSampler.from_config(
      config(""), height=H, width=H, num_frames=F, num_samples=400)
  frames = np.random.default_rng(0).integers(0, 256, (2, H, H, 3), np.uint8)
  outs = [sampler._augment(np.random.default_rng(s), frames) for s in range(8)]
  raw = frames.astype(np.float32) / 127.5 - 1.0
  for out in outs:
    assert out.shape == (2, H, H, 3) and out.min() >= -1 and out.max() <= 1
  # Not a pixel copy, but for the rare full-size crop without a flip.
  assert sum(np.abs(out - raw).mean() > 0.05 for out in outs) >= 6
  assert any(np.abs(a - b).mean() > 0.05 for a, b in zip(outs, outs[1:]))
  np.testing.assert_array_equal(sampler._augment(np.random.default_rng(3), frames), outs[3])


def test_synthetic_sources_pair_windows_of_one_scene(tmp_path):
  geometry = dict(height=16, width=16, num_frames=4, fps=8.0, sample_rate=8000, channels=1)
  synthetic.write_dataset(str(tmp_path), num_clips=4, seed=1, clips_per_source=2, **geometry)
  shard = loader.find_shards(str(tmp_path))[0]
  with open(references.sidecar_path(shard)) as f:
    import json
    sources = json.load(f)
  assert sources == ["synthetic/1/0@0.000", "synthetic/1/0@0.500", "synthetic/1/1@0.000",
                     "synthetic/1/1@0.500"]
  reader = array_record_module.ArrayRecordReader(shard)
  clips = [records.decode_clip(r) for r in reader.read_all()]
  reader.close()
  assert [c["source"] for c in clips] == sources
  assert clips[0]["caption"] == clips[1]["caption"]          # one scene
  assert not np.array_equal(clips[0]["video"], clips[1]["video"])
