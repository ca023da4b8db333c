"""grain loader: exact batches, bad-record skipping, resume, per-process shares, workers."""

import collections
import zlib

from array_record.python import array_record_module
import grain
from flax import serialization
import numpy as np
import pytest

from configs import tiny
from data_pipelines import synthetic
from skyreels_jax.data import loader
from skyreels_jax.data import records
from skyreels_jax.data.prefetch import DevicePrefetch

NUM_CLIPS = 40
GEOMETRY = synthetic.geometry_from_config(tiny.get_config().data)
SR = GEOMETRY["sample_rate"]
CLIP_SAMPLES = int(GEOMETRY["num_frames"] / GEOMETRY["fps"] * SR)   # 2 s
FRAME_SAMPLES = int(SR / GEOMETRY["fps"])


class WordHashTokenizer:
  """Test tokenizer: crc32 of each word mod 1024, padded to 24 (picklable, deterministic)."""

  def __call__(self, caption):
    words = caption.replace("<", " <").replace(">", "> ").split()[:24]
    ids = np.zeros(24, np.int32)
    ids[:len(words)] = [zlib.crc32(w.encode()) % 1024 for w in words]
    return {"text_ids": ids, "text_mask": np.arange(24) < len(words)}


def _read(path):
  reader = array_record_module.ArrayRecordReader(str(path))
  out = reader.read_all()
  reader.close()
  return out


def _write(path, items):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for item in items:
    writer.write(item)
  writer.close()


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("clean")
  synthetic.write_dataset(str(out), num_clips=NUM_CLIPS, seed=0, clips_per_shard=16, **GEOMETRY)
  return out


@pytest.fixture(scope="module")
def clips(clean_dir):
  """Decoded clips in source order (shards sorted by name)."""
  return [records.decode_clip(r) for p in loader.find_shards(str(clean_dir)) for r in _read(p)]


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory, clean_dir):
  """The clean shards plus one shard of 7 bad records: garbage, wrong version, wrong size."""
  out = tmp_path_factory.mktemp("corrupt")
  for p in loader.find_shards(str(clean_dir)):
    _write(out / p.split("/")[-1], _read(p))
  good = records.decode_clip(_read(loader.find_shards(str(clean_dir))[0])[0])
  small = synthetic.make_clip(np.random.default_rng(0), **dict(GEOMETRY, height=16))
  bad = [b"", b"\x00garbage", bytes(range(256)), records.encode_clip(good)[:100],
         serialization.msgpack_serialize(dict(good, schema_version=99)),
         records.encode_clip(small),  # 16x32: resizing is not supported yet
         records.encode_clip(_cut(good, 4, 4 * FRAME_SAMPLES))]  # too few frames
  _write(out / "zz-corrupt.array_record", bad)
  return out


def _cut(clip, num_frames, num_samples):
  """The clip shortened to its first frames and samples (bounce times dropped)."""
  clip = {k: v for k, v in clip.items() if k != "bounces"}
  return dict(clip, video=clip["video"][:num_frames], audio=clip["audio"][:num_samples])


def _config(path, **overrides):
  c = tiny.get_config().data
  c.path = str(path)
  c.update(overrides)
  return c


def _iterator(path, *, batch=8, seed=0, **overrides):
  return loader.make_iterator(_config(path, **overrides), tokenizer=WordHashTokenizer(),
                              global_batch_size=batch, seed=seed)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _ids(batch):
  """Video bytes of each example (the loader sends the uint8 pixels as they are)."""
  return [v.tobytes() for v in batch["video"]]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batches_are_exact(clean_dir, clips):
  it = _iterator(clean_dir, shuffle=False)
  batches = _take(it, 6)  # 48 examples: one epoch of 40 and the start of the next
  batch = batches[0]
  assert sorted(batch) == ["audio", "has_audio", "has_video", "text_ids", "text_mask", "video"]
  assert batch["has_audio"].dtype == bool and batch["has_audio"].all()
  assert batch["has_video"].all()
  # Pixels travel as uint8 (4x less host -> device traffic); the step scales them.
  assert batch["video"].shape == (8, 16, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert batch["audio"].shape == (8, CLIP_SAMPLES, 1) and batch["audio"].dtype == np.float32
  assert batch["text_ids"].shape == (8, 24) and batch["text_ids"].dtype == np.int32
  assert batch["text_mask"].shape == (8, 24) and batch["text_mask"].dtype == bool
  assert batch["video"].min() == 0 and batch["video"].max() == 255  # background 0, shapes 255
  assert np.abs(batch["audio"]).max() <= 1.0
  for i in range(48):
    clip, b, j = clips[i % NUM_CLIPS], batches[i // 8], i % 8
    np.testing.assert_array_equal(b["video"][j], clip["video"])
    np.testing.assert_array_equal(b["audio"][j], clip["audio"])
    np.testing.assert_array_equal(b["text_ids"][j],
                                  WordHashTokenizer()(clip["caption"])["text_ids"])
  assert loader.iterator_stats(it) == {"bad_records": 0}
  it.close()


def test_preprocess_crops_time_and_maps_channels(clips):
  clip = dict(clips[0], audio=np.stack([clips[0]["audio"][:, 0], -clips[0]["audio"][:, 0]], 1))
  data = records.encode_clip(clip)
  tok = WordHashTokenizer()
  stereo = loader.ClipPreprocessor.from_config(_config("", audio_channels=2), tok)(data)
  np.testing.assert_array_equal(stereo["audio"], clip["audio"])
  short = loader.ClipPreprocessor.from_config(_config("", num_frames=8, audio_channels=1), tok)
  ex = short(data)
  assert ex["video"].shape == (8, 32, 32, 3) and ex["audio"].shape == (CLIP_SAMPLES // 2, 1)
  np.testing.assert_array_equal(ex["audio"], 0.0)  # the mean of +x and -x
  dup = loader.ClipPreprocessor.from_config(_config("", audio_channels=2), tok)(
      records.encode_clip(clips[1]))
  np.testing.assert_array_equal(dup["audio"], np.repeat(clips[1]["audio"], 2, axis=1))
  # Audio short by less than a frame is zero-padded; more is a bad record.
  short_by = FRAME_SAMPLES - 1
  mono = loader.ClipPreprocessor.from_config(_config(""), tok)
  padded = mono(records.encode_clip(_cut(clips[1], 16, CLIP_SAMPLES - short_by)))
  np.testing.assert_array_equal(padded["audio"][:-short_by], clips[1]["audio"][:-short_by])
  np.testing.assert_array_equal(padded["audio"][-short_by:], 0.0)
  bad = mono(records.encode_clip(_cut(clips[1], 15, CLIP_SAMPLES - FRAME_SAMPLES)))
  assert isinstance(bad, loader.BadRecord) and "15 frames" in bad.reason
  other_rate = loader.ClipPreprocessor.from_config(_config("", fps=16.0), tok)(data)
  assert isinstance(other_rate, loader.BadRecord) and "resample" in other_rate.reason


def test_bad_records_are_skipped_and_counted(corrupt_dir, clips):
  it = _iterator(corrupt_dir, shuffle=False)
  batches = _take(it, 6)  # 40 good, then the 7 bad records, then 8 good of epoch 2
  assert loader.iterator_stats(it) == {"bad_records": 7}
  ids = [i for b in batches for i in _ids(b)]
  assert ids == [clips[i % NUM_CLIPS]["video"].tobytes() for i in range(48)]
  it.close()

  it = _iterator(corrupt_dir, shuffle=True)
  _take(it, 12)  # 96 good examples: between 2 and 3 epochs of 47 records
  assert 14 <= loader.iterator_stats(it)["bad_records"] <= 21
  it.close()


def test_a_prefetched_batch_counts_its_bad_records_once_handed_out(corrupt_dir):
  it = DevicePrefetch(_iterator(corrupt_dir, shuffle=False), dict)
  _take(it, 5)       # 40 good records; the held sixth batch was read past the 7 bad ones
  assert loader.iterator_stats(it) == {"bad_records": 0}
  _take(it, 1)
  assert loader.iterator_stats(it) == {"bad_records": 7}
  it.close()


def test_get_state_set_state_resumes_exactly(corrupt_dir):
  it = _iterator(corrupt_dir, seed=3)
  _take(it, 4)
  state = it.get_state()
  expected = _take(it, 4)
  expected_bad = loader.iterator_stats(it)["bad_records"]
  assert expected_bad > 0
  it.close()

  resumed = _iterator(corrupt_dir, seed=3)
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)
  assert loader.iterator_stats(resumed)["bad_records"] == expected_bad
  resumed.close()


def test_orbax_checkpoint_round_trip(corrupt_dir, tmp_path):
  import orbax.checkpoint as ocp
  it = _iterator(corrupt_dir, seed=5)
  _take(it, 3)
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    expected = _take(it, 4)  # moving on while the save may still be in flight
    mngr.wait_until_finished()
  bad = loader.iterator_stats(it)["bad_records"]
  it.close()

  resumed = _iterator(corrupt_dir, seed=5)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_same(_take(resumed, 4), expected)
  assert loader.iterator_stats(resumed)["bad_records"] == bad
  resumed.close()


def test_process_blocks_map_dataset():
  ds = grain.MapDataset.range(24)
  blocks = [loader.ProcessBlocksMapDataset(ds, block=2, index=p, count=3) for p in range(3)]
  assert [list(b) for b in blocks] == [[0, 1, 6, 7, 12, 13, 18, 19], [2, 3, 8, 9, 14, 15, 20, 21],
                                       [4, 5, 10, 11, 16, 17, 22, 23]]
  assert list(blocks[1][2:5]) == [8, 9, 14]
  with pytest.raises(ValueError, match="block 3 of 3"):
    loader.ProcessBlocksMapDataset(ds, block=2, index=3, count=3)


def test_processes_read_blocks_of_the_global_batch(clean_dir, clips, monkeypatch):
  """Two processes share one shuffled order: process p reads rows [4p, 4p + 4) of every global
  batch of 8, decodes only those, and together they see exactly the one-process batches."""
  index = {c["video"].tobytes(): i for i, c in enumerate(clips)}
  it = _iterator(clean_dir)
  single = [[index[i] for i in _ids(b)] for b in _take(it, 7)]  # 56 examples: 1.4 epochs
  it.close()
  order = grain.MapDataset.range(NUM_CLIPS).seed(0).shuffle().repeat(None)
  assert [order[i] for i in range(56)] == sum(single, [])
  raw = [r for path in loader.find_shards(str(clean_dir)) for r in _read(path)]
  raw = {r: i for i, r in enumerate(raw)}
  decode = records.decode_clip
  for p in range(2):
    decoded = []
    monkeypatch.setattr(records, "decode_clip", lambda data: decoded.append(raw[data]) or
                        decode(data))
    it = loader.make_iterator(_config(clean_dir), tokenizer=WordHashTokenizer(),
                              global_batch_size=8, seed=0, process_index=p, process_count=2)
    batches = _take(it, 7)
    it.close()
    assert batches[0]["video"].shape[0] == 4
    assert [[index[i] for i in _ids(b)] for b in batches] == [g[4 * p:4 * p + 4] for g in single]
    # Read-ahead decodes more than 28, but only this process's stream (each record appears in
    # it at most once per epoch of the global order: a foreign record would be one too many).
    own = [order[(i // 4) * 8 + 4 * p + i % 4] for i in range(len(decoded) + 8)]
    assert len(decoded) >= 28
    assert not collections.Counter(decoded) - collections.Counter(own)


def test_worker_processes(corrupt_dir, clips):
  index = {c["video"].tobytes(): i for i, c in enumerate(clips)}
  it = _iterator(corrupt_dir, batch=4, num_workers=2)
  first = _take(it, 2)
  state = it.get_state()
  expected = _take(it, 12)  # 48 examples: every worker has passed its share of bad records
  bad = loader.iterator_stats(it)["bad_records"]
  it.close()
  for b in first + expected:
    assert b["video"].shape == (4, 16, 32, 32, 3)
    assert all(i in index for i in _ids(b))
  assert bad >= 7

  resumed = _iterator(corrupt_dir, batch=4, num_workers=2)
  resumed.set_state(state)
  _assert_same(_take(resumed, 12), expected)
  assert loader.iterator_stats(resumed)["bad_records"] == bad
  resumed.close()


def test_all_bad_records_stop_with_an_error(tmp_path, monkeypatch):
  _write(tmp_path / "bad.array_record", [b"junk"] * 3)
  monkeypatch.setattr(loader, "MAX_CONSECUTIVE_BAD_RECORDS", 10)
  it = _iterator(tmp_path)
  with pytest.raises(RuntimeError, match="10 bad records in a row"):
    next(it)
  it.close()


def test_config_errors(tmp_path, clean_dir):
  with pytest.raises(ValueError, match="data.path is empty"):
    _iterator("")
  with pytest.raises(ValueError, match="data.path=.*no ArrayRecord shards"):
    _iterator(tmp_path / "missing")
  with pytest.raises(ValueError, match="data.batch_size 6 is not divisible"):
    loader.make_iterator(_config(clean_dir), tokenizer=WordHashTokenizer(),
                         global_batch_size=6, seed=0, process_index=0, process_count=4)
  with pytest.raises(TypeError):
    loader.iterator_stats(iter([1]))


@pytest.mark.parametrize("edit_prompt", ["instruction", "append"])
def test_given_fields_of_edit_pairs(tmp_path, edit_prompt):
  """With data-given tasks on, every example carries the fields (one shape per batch):
  the record's mask, source, edit prompt (the instruction alone or appended to the
  caption) and reference stills right-aligned; plain records carry fills, flagged off."""
  tok = WordHashTokenizer()
  synthetic.write_dataset(str(tmp_path / "e"), num_clips=4, seed=1, edit_pairs=True,
                          **GEOMETRY)
  synthetic.write_dataset(str(tmp_path / "p"), num_clips=4, seed=2, **GEOMETRY)
  clips = [records.decode_clip(b) for b in _read(next((tmp_path / "e").glob("*.array_record")))]
  plain = [records.decode_clip(b) for b in _read(next((tmp_path / "p").glob("*.array_record")))]
  data = tiny.get_config().data
  data.path, data.shuffle = str(tmp_path / "*" / "*.array_record"), False
  data.tasks.edit_pair = data.tasks.ref_inpaint = 1.0
  data.ref_images, data.edit_prompt = 2, edit_prompt
  batch = next(loader.make_iterator(data, tokenizer=tok, global_batch_size=8, seed=0))
  for i, clip in enumerate(clips + plain):
    edited = i < 4
    assert batch["has_mask"][i] == batch["has_source"][i] == edited
    if edited:
      np.testing.assert_array_equal(batch["given_mask"][i], clip["mask"])
      np.testing.assert_allclose(batch["source_video"][i],
                                 clip["source_video"] / 127.5 - 1.0, atol=1e-6)
      prompt = (clip["instruction"] if edit_prompt == "instruction"
                else f"{clip['caption']} {clip['instruction']}")
      np.testing.assert_array_equal(batch["edit_text_ids"][i], tok(prompt)["text_ids"])
      n = 0 if clip["references"] is None else 1
      assert batch["given_ref_count"][i] == n and batch["has_refs"][i] == (n > 0)
      if n:
        np.testing.assert_allclose(batch["given_refs"][i, -1],
                                   clip["references"][0] / 127.5 - 1.0, atol=1e-6)
        assert not batch["given_refs"][i, 0].any()
    else:
      assert batch["given_mask"][i].min() == 1 and not batch["has_refs"][i]
      np.testing.assert_array_equal(batch["source_video"][i],
                                    batch["video"][i].astype(np.float32) / 127.5 - 1.0)
      np.testing.assert_array_equal(batch["edit_text_ids"][i], batch["text_ids"][i])
