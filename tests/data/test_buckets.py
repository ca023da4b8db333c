"""Shape buckets: bucket arithmetic, and the loader drawing each batch from one bucket."""

import collections

from array_record.python import array_record_module
import ml_collections
import numpy as np
import pytest

from configs import base
from skyreels_jax.data import buckets, loader, records

FPS, SR = 8.0, 1000


def _data_config(path="", **overrides):
  c = base.get_config().data     # every field has its one default there
  c.update(dict(
      path=path, height=16, width=16, num_frames=8, fps=FPS, sample_rate=SR, audio_channels=1,
      batch_size=4, num_workers=0, shuffle=True, resolutions=((16, 16), (8, 24)),
      durations=(1.0,), bucket_weights=ml_collections.ConfigDict()))
  c.update(overrides)
  return c


def _tokenizer(caption):
  ids = np.zeros(4, np.int32)
  ids[0] = len(caption)
  return {"text_ids": ids, "text_mask": np.arange(4) < 1}


def _write(path, clips):
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for clip in clips:
    writer.write(records.encode_clip(clip))
  writer.close()


def _video(i, h, w, sound=True):
  rng = np.random.default_rng(i)
  clip = dict(kind="video", video=rng.integers(0, 256, (8, h, w, 3), dtype=np.uint8), fps=FPS,
              caption="v" * (i + 1))
  if sound:
    clip.update(audio=rng.uniform(-1, 1, (SR, 1)).astype(np.float32), sample_rate=SR)
  return clip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """12 square videos (4 silent), 6 wide videos, 5 images, 7 sound-only clips, and a folder
  of a bucket this config does not have."""
  root = tmp_path_factory.mktemp("buckets")
  _write(root / "16x16x8" / "a.array_record",
         [_video(i, 16, 16, sound=i % 3 != 0) for i in range(12)])
  _write(root / "8x24x8" / "a.array_record", [_video(100 + i, 8, 24) for i in range(6)])
  rng = np.random.default_rng(7)
  _write(root / "image_16x16" / "a.array_record",
         [dict(kind="image", video=rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8),
               caption="i") for _ in range(5)])
  _write(root / f"audio_{SR}" / "a.array_record",
         [dict(kind="audio", audio=rng.uniform(-1, 1, (SR, 1)).astype(np.float32),
               sample_rate=SR, caption="a") for _ in range(7)])
  _write(root / "64x64x8" / "a.array_record", [_video(200, 64, 64)])
  return root


def test_bucket_arithmetic():
  c = _data_config(durations=(1.0, 2.0))
  names = [b.name for b in buckets.all_buckets(c)]
  assert names == ["16x16x8", "16x16x16", "8x24x8", "8x24x16", "image_16x16", "image_8x24",
                   "audio_1000", "audio_2000"]
  assert buckets.closest_resolution(48, 64, [(16, 16), (8, 24), (24, 8)]) == (16, 16)
  assert buckets.closest_resolution(64, 40, [(16, 16), (8, 24), (24, 8)]) == (16, 16)
  assert buckets.closest_resolution(64, 24, [(16, 16), (8, 24), (24, 8)]) == (24, 8)
  assert buckets.closest_resolution(30, 100, [(16, 16), (8, 24), (24, 8)]) == (8, 24)
  assert buckets.longest_fitting(20, [8, 16]) == 16
  assert buckets.longest_fitting(7, [8, 16]) is None
  single = _data_config(resolutions=(), durations=())
  assert [b.name for b in buckets.all_buckets(single)] == ["16x16x8", "image_16x16",
                                                           "audio_1000"]


def _shape_key(batch):
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


def test_each_batch_is_one_bucket(data_dir):
  it = loader.make_iterator(_data_config(str(data_dir)), tokenizer=_tokenizer,
                            global_batch_size=4, seed=0)
  seen = collections.Counter()
  for _ in range(60):
    batch = next(it)
    v = batch["video"]
    if "audio" not in batch:       # image bucket: T2I, no sound
      assert v.shape == (4, 1, 16, 16, 3) and batch["has_video"].all()
      seen["image"] += 1
    elif not batch["has_video"].any():   # sound alone: a black stand-in video, smallest size
      assert v.shape == (4, 8, 8, 24, 3) and np.all(v == 0)     # black
      assert batch["audio"].shape == (4, SR, 1) and batch["has_audio"].all()
      seen["audio"] += 1
    else:
      assert v.shape in ((4, 8, 16, 16, 3), (4, 8, 8, 24, 3))
      assert batch["audio"].shape == (4, SR, 1)
      silent = ~batch["has_audio"]
      np.testing.assert_array_equal(batch["audio"][silent], 0.0)
      assert np.abs(batch["audio"][~silent]).max() > 0
      seen[v.shape[2:4]] += 1
  # By record counts 12 : 6 : 5 : 7; the unknown 64x64 folder is left out.
  total = sum(seen.values())
  for key, n in (((16, 16), 12), ((8, 24), 6), ("image", 5), ("audio", 7)):
    assert seen[key] / total == pytest.approx(n / 30, abs=0.08), seen
  assert loader.iterator_stats(it) == {"bad_records": 0}


def test_bucket_weights_and_resume(data_dir):
  c = _data_config(str(data_dir))
  c.bucket_weights = ml_collections.ConfigDict({"image_16x16": 0.0, "audio_1000": 0.0,
                                                "8x24x8": 3.0, "16x16x8": 1.0})
  it = loader.make_iterator(c, tokenizer=_tokenizer, global_batch_size=4, seed=1)
  first = [next(it) for _ in range(5)]
  state = it.get_state()
  rest = [next(it) for _ in range(12)]
  shapes = collections.Counter(b["video"].shape[2:4] for b in first + rest)
  assert set(shapes) == {(16, 16), (8, 24)}
  assert shapes[(8, 24)] / sum(shapes.values()) == pytest.approx(0.75, abs=0.1)
  again = loader.make_iterator(c, tokenizer=_tokenizer, global_batch_size=4, seed=1)
  again.set_state(state)
  for a, b in zip(rest, [next(again) for _ in range(12)]):
    assert _shape_key(a) == _shape_key(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_processes_draw_the_same_bucket_each_step(data_dir):
  c = _data_config(str(data_dir))
  its = [loader.make_iterator(c, tokenizer=_tokenizer, global_batch_size=4, seed=2,
                              process_index=p, process_count=2) for p in range(2)]
  for _ in range(20):
    a, b = next(its[0]), next(its[1])
    assert _shape_key(a) == _shape_key(b)
    assert a["video"].shape[0] == 2


def test_records_of_the_wrong_kind_are_bad(data_dir, tmp_path):
  _write(tmp_path / "16x16x8" / "a.array_record",
         [_video(1, 16, 16), dict(kind="image", video=np.zeros((1, 16, 16, 3), np.uint8),
                                  caption="")])
  prep = loader.ClipPreprocessor.for_bucket(buckets.Bucket("video", 16, 16, 8, SR),
                                            _data_config(), _tokenizer, (8, 24))
  bad = prep(records.encode_clip(dict(kind="image", video=np.zeros((1, 16, 16, 3), np.uint8),
                                      caption="")))
  assert isinstance(bad, loader.BadRecord) and "image record in a video bucket" in bad.reason
  it = loader.make_iterator(_data_config(str(tmp_path), resolutions=((16, 16),),
                                         shuffle=False), tokenizer=_tokenizer,
                            global_batch_size=4, seed=0)
  next(it)
  assert loader.iterator_stats(it)["bad_records"] >= 1


def test_no_usable_bucket_is_a_clear_error(data_dir):
  with pytest.raises(ValueError, match="no ArrayRecord shards for this config's buckets"):
    loader.make_iterator(_data_config(str(data_dir / "64x64x8" / "nothing")),
                         tokenizer=_tokenizer, global_batch_size=4, seed=0)
