"""encode_latents: latent shards equal the run's encoders applied to the loader's clips, bad
records are counted, a restart redoes nothing, and the encoders' identity travels along."""

import json
import os
import shutil
import subprocess
import sys

from array_record.python import array_record_module
from flax import nnx
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from configs import tiny
from data_pipelines import encode_latents, synthetic
from skyreels_jax.data import latents, records
from skyreels_jax.data.loader import ClipPreprocessor
from skyreels_jax.models import text
from skyreels_jax.models.text import tiny as tiny_text
from skyreels_jax.tasks.examples import make_codecs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "16x16x8"                 # small_run_config's single geometry, as a bucket folder
BUCKET_SHARD = "extra-00000-of-00001.array_record"


def small_run_config():
  """configs/tiny.py at the test geometry of tests/conftest.py's small_run_config (this
  folder's conftest shadows that module): 8 frames of 16x16 at 8 fps, 1 s of 8 kHz mono."""
  c = tiny.get_config()
  c.data.num_frames, c.data.height, c.data.width = 8, 16, 16
  return c


def _read(path):
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    return reader.read_all()
  finally:
    reader.close()


def _write(path, blobs):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for blob in blobs:
    writer.write(blob)
  writer.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """6 clips flat (shards of 4 and 2), and a bucket folder with one shard of 11 records: 9
  clips, corrupt bytes (4th) and a clip of the wrong size (8th), across a batch boundary."""
  root = tmp_path_factory.mktemp("clips")
  geometry = synthetic.geometry_from_config(small_run_config().data)
  synthetic.write_dataset(str(root), num_clips=6, seed=0, clips_per_shard=4, **geometry)
  blobs = [records.encode_clip(synthetic.make_clip(np.random.default_rng([1, i]), **geometry))
           for i in range(9)]
  blobs.insert(3, b"\x93corrupt record bytes")
  small = dict(geometry, height=8)
  blobs.insert(7, records.encode_clip(synthetic.make_clip(np.random.default_rng(2), **small)))
  os.makedirs(root / BUCKET)
  _write(root / BUCKET / BUCKET_SHARD, blobs)
  return root


@pytest.fixture(scope="module")
def encoded(data, tmp_path_factory):
  out = tmp_path_factory.mktemp("latents")
  logs = []
  index = encode_latents.encode_dataset(str(data), str(out), small_run_config(), batch_size=8,
                                        log=logs.append)
  return out, index, logs


def _shard_paths(data):
  flat = sorted(p.name for p in data.glob("*.array_record"))
  return flat + [f"{BUCKET}/{BUCKET_SHARD}"]


def test_latents_equal_the_encoders_of_the_preprocessed_clips(data, encoded):
  out, _, _ = encoded
  config = small_run_config()
  codecs, tokenizer = make_codecs(config)
  prep = ClipPreprocessor.from_config(config.data, tokenizer)
  identity = latents.encoder_identity(config, text_frozen=False)
  num_checked = 0
  for path in _shard_paths(data):
    good = []
    for blob in _read(data / path):
      try:
        clip = records.decode_clip(blob)
        good.append((clip, prep.preprocess(clip)))
      except records.RecordError:
        continue
    got = [latents.decode_latent_record(b) for b in _read(out / path)]
    assert len(got) == len(good)
    for rec, (clip, example) in zip(got, good):
      np.testing.assert_array_equal(
          rec["video_latent"], np.asarray(codecs.video_ae.encode(example["video"][None]))[0])
      np.testing.assert_array_equal(
          rec["audio_latent"], np.asarray(codecs.audio_ae.encode(example["audio"][None]))[0])
      tokens = tokenizer(clip["caption"])
      np.testing.assert_array_equal(rec["text_ids"], tokens["text_ids"])
      np.testing.assert_array_equal(rec["text_mask"], tokens["text_mask"])
      assert rec["text_embedding"] is None and rec["video_latent"].dtype == np.float32
      assert (rec["kind"], rec["caption"]) == ("video", clip["caption"])
      assert rec["encoders"] == identity
      num_checked += 1
  assert num_checked == 15


def test_index_counts_bad_records_and_records_the_encoders(encoded):
  out, index, logs = encoded
  assert json.loads((out / "index.json").read_text()) == index
  config = small_run_config()
  assert index["complete"] and index["dtype"] == "float32"
  assert index["encoders"] == latents.encoder_identity(config, text_frozen=False)
  assert index["encoders"]["video_ae"] == dict(kind="identity", spatial_factor=4,
                                               temporal_factor=1, path="", tile_height=0,
                                               tile_width=0, tile_stride_height=0,
                                               tile_stride_width=0)
  assert index["geometry"] == dict(height=16, width=16, num_frames=8, fps=8.0,
                                   sample_rate=8000, audio_channels=1)
  assert index["text"] == dict(length=24, embedding_width=None)
  assert (index["num_records"], index["bad_records"]) == (15, 2)
  flat, bucket = index["buckets"]["."], index["buckets"][BUCKET]
  for info in (flat, bucket):
    assert info["name"] == BUCKET
    assert info["video_latent_shape"] == [8, 4, 4, 48]      # 16x16 / 4, 3 * 4 * 4 channels
    assert info["audio_latent_shape"] == [50, 160]           # 8000 samples / hop 160
  assert (flat["num_records"], flat["bad_records"]) == (6, 0)
  assert (bucket["num_records"], bucket["bad_records"]) == (9, 2)
  stats = index["shards"][f"{BUCKET}/{BUCKET_SHARD}"]
  assert stats["bad_records"] == 2 and len(stats["bad_reasons"]) == 2
  assert "corrupt record" in stats["bad_reasons"][0]
  assert "clip is 8x16, bucket wants 16x16" in stats["bad_reasons"][1]
  assert [s["num_records"] for s in index["shards"].values()] == [4, 2, 9]
  assert logs[-1].startswith("encoded 3 of 3 shards (0 already done): 15 latent records, 2 bad")
  assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]


def test_restart_redoes_nothing_and_finishes_what_is_missing(data, encoded, tmp_path):
  out = tmp_path / "latents"
  shutil.copytree(encoded[0], out)
  paths = _shard_paths(data)
  before = {p: os.stat(out / p).st_ino for p in paths}
  logs = []
  index = encode_latents.encode_dataset(str(data), str(out), small_run_config(), log=logs.append)
  assert {p: os.stat(out / p).st_ino for p in paths} == before
  assert logs == [logs[-1]] and "encoded 0 of 3 shards (3 already done)" in logs[-1]
  assert index == encoded[1]

  # An interrupted run: one shard missing, a stale partial file and an unfinished index.
  missing = paths[1]
  os.remove(out / missing)
  (out / f".{missing}.partial").write_bytes(b"half a shard")
  index_file = json.loads((out / "index.json").read_text())
  index_file["complete"] = False
  (out / "index.json").write_text(json.dumps(index_file))
  logs = []
  index = encode_latents.encode_dataset(str(data), str(out), small_run_config(), log=logs.append)
  assert len(logs) == 2 and logs[0].startswith(f"{missing}: 2 records, 0 bad")
  assert {p: os.stat(out / p).st_ino for p in paths if p != missing} == {
      p: i for p, i in before.items() if p != missing}
  assert _read(out / missing) == _read(encoded[0] / missing)
  assert index == encoded[1] and not (out / f".{missing}.partial").exists()


def test_restart_with_other_encoders_is_refused(data, encoded, tmp_path):
  out = tmp_path / "latents"
  shutil.copytree(encoded[0], out)
  other = small_run_config()
  other.video_ae.spatial_factor = 2
  with pytest.raises(ValueError, match="another encoders"):
    encode_latents.encode_dataset(str(data), str(out), other, log=lambda _: None)
  with pytest.raises(ValueError, match="another dtype"):
    encode_latents.encode_dataset(str(data), str(out), small_run_config(), dtype="bfloat16",
                                  log=lambda _: None)


def test_frozen_text_encoder_stores_embeddings(data, tmp_path):
  """A frozen spec (trainable=False) stores its embeddings; the 'pretrained' weights here are
  a TinyTextEncoder of a fixed seed, whatever rngs the tool passes."""
  config = small_run_config()
  t = config.text
  frozen = lambda rngs: tiny_text.TinyTextEncoder(
      t.vocab_size, t.max_length, t.width, rngs=nnx.Rngs(3), dtype=jnp.float32,
      param_dtype=jnp.float32)
  spec = text.TextEncoderSpec(tiny_text.HashWordTokenizer(t.vocab_size, t.max_length), frozen,
                              t.width, trainable=False)
  index = encode_latents.encode_dataset(str(data), str(tmp_path), config, text_spec=spec,
                                        log=lambda _: None)
  assert index["encoders"]["text"]["frozen"] is True
  assert index["text"] == dict(length=t.max_length, embedding_width=t.width)
  with nnx.use_eager_sharding(False):
    encoder = frozen(None)
  path = _shard_paths(data)[0]
  for blob in _read(tmp_path / path):
    rec = latents.decode_latent_record(blob)
    tokens = spec.tokenizer(rec["caption"])
    emb, mask = encoder(jnp.asarray(tokens["text_ids"])[None],
                        jnp.asarray(tokens["text_mask"])[None])
    assert rec["text_ids"] is None and rec["text_embedding"].shape == (t.max_length, t.width)
    np.testing.assert_allclose(rec["text_embedding"], np.asarray(emb)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rec["text_mask"], np.asarray(mask)[0])


def test_batch_must_split_over_the_devices(data, tmp_path):
  with pytest.raises(ValueError, match="batch_size 6 must be a positive multiple of the 8"):
    encode_latents.encode_dataset(str(data), str(tmp_path), small_run_config(), batch_size=6)


def test_unknown_bucket_folder_is_refused(data, tmp_path):
  src = tmp_path / "clips"
  shutil.copytree(data, src)
  os.rename(src / BUCKET, src / "64x64x8")
  with pytest.raises(ValueError, match="64x64x8 is not a shape bucket of this config"):
    encode_latents.encode_dataset(str(src), str(tmp_path / "out"), small_run_config())


def test_cli_bfloat16(data, encoded, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "data_pipelines.encode_latents", f"--data={data}",
       f"--out={tmp_path}", "--config=configs/tiny.py", "--config.data.height=16",
       "--config.data.width=16", "--config.data.num_frames=8", "--batch_size=16",
       "--dtype=bfloat16"],
      cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
  assert "encoded 3 of 3 shards (0 already done): 15 latent records, 2 bad" in proc.stdout
  index = json.loads((tmp_path / "index.json").read_text())
  assert index["dtype"] == "bfloat16" and index["encoders"] == encoded[1]["encoders"]
  for path in _shard_paths(data):
    got = [latents.decode_latent_record(b) for b in _read(tmp_path / path)]
    want = [latents.decode_latent_record(b) for b in _read(encoded[0] / path)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
      for key in ("video_latent", "audio_latent"):
        assert g[key].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(g[key], w[key].astype(ml_dtypes.bfloat16))
      np.testing.assert_array_equal(g["text_ids"], w["text_ids"])


def test_given_conditions_travel_as_latents_and_train(tmp_path):
  """Edit pairs through encode_latents: masks on the latent grid by the rule, the source
  and reference stills encoded like the clip, the edit prompt tokenized; the loader yields
  them and a train step on latents uses them (no task falls back)."""
  from skyreels_jax.data import loader
  from skyreels_jax.tasks import given
  from skyreels_jax.tasks.refiner import still_latents
  from skyreels_jax.train import trainer
  config = small_run_config()
  geometry = synthetic.geometry_from_config(config.data)
  clips_dir, lat = tmp_path / "clips", tmp_path / "lat"
  synthetic.write_dataset(str(clips_dir), num_clips=8, seed=3, edit_pairs=True, **geometry)
  encode_latents.encode_dataset(str(clips_dir), str(lat), config, log=lambda _: None)
  codecs, tokenizer = make_codecs(config)
  clips = [records.decode_clip(b) for b in _read(next(clips_dir.glob("*.array_record")))]
  recs = [latents.decode_latent_record(b) for b in _read(next(lat.glob("*.array_record")))]
  for clip, rec in zip(clips, recs):
    want = given.video_keep(clip["mask"], rec["video_latent"].shape[:3], 1)[..., 0]
    np.testing.assert_array_equal(rec["given_keep"], want)
    src = np.asarray(codecs.video_ae.encode(clip["source_video"][None] / 127.5 - 1.0))[0]
    np.testing.assert_allclose(rec["source_latent"], src, atol=1e-6)
    np.testing.assert_array_equal(rec["edit_text_ids"],
                                  tokenizer(clip["instruction"])["text_ids"])
    assert rec["instruction"] == clip["instruction"]
    if clip["references"] is not None:
      refs = np.asarray(still_latents(codecs.video_ae, clip["references"][None] / 127.5 - 1))
      np.testing.assert_allclose(rec["reference_latents"], refs[0], atol=1e-6)
    else:
      assert rec["reference_latents"] is None
  assert any(r["reference_latents"] is not None for r in recs)

  config.data.format, config.data.path = "latents", str(lat)
  for name in config.data.tasks:
    config.data.tasks[name] = 0.0
  config.data.tasks.edit_pair = config.data.tasks.inpaint_given = 1.0
  config.data.tasks.ref_inpaint = 1.0
  config.data.shuffle = False
  it = loader.make_iterator(config.data, tokenizer=tokenizer, global_batch_size=8, seed=0,
                            encoders=latents.encoder_identity(config, text_frozen=False))
  batch = next(it)
  assert batch["has_mask"].all() and batch["has_source"].all()
  np.testing.assert_array_equal(batch["given_keep"][0], recs[0]["given_keep"])
  np.testing.assert_array_equal(batch["edit_text_ids"][0], recs[0]["edit_text_ids"])
  config.train.steps, config.train.log_every = 1, 1
  out = trainer.train(config, str(tmp_path / "run"))
  # Only ref_inpaint draws of removals (no reference) fall back.
  removals = sum(r["reference_latents"] is None for r in recs)
  assert 0 <= out["task_fallbacks"] <= removals and np.isfinite(out["loss"])
  assert batch["has_refs"].sum() == len(recs) - removals


def test_shots_travel_as_latents(tmp_path):
  """model.shot_attention: each record keeps the tokenizer's shot of every token of its
  tagged caption and the shots' spans, the loader yields them, and latents made without
  them are refused by a shot run, naming the setting."""
  from skyreels_jax.data import loader, shots
  config = small_run_config()
  config.data.shot_captions = config.model.shot_attention = True
  config.text.max_length, config.data.max_shots_per_clip = 64, 2
  geometry = synthetic.geometry_from_config(config.data)
  clips_dir, lat = tmp_path / "clips", tmp_path / "lat"
  synthetic.write_dataset(str(clips_dir), num_clips=8, seed=3, shots=2, **geometry)
  encode_latents.encode_dataset(str(clips_dir), str(lat), config, log=lambda _: None)
  _, tokenizer = make_codecs(config)
  clips = [records.decode_clip(b) for b in _read(next(clips_dir.glob("*.array_record")))]
  recs = [latents.decode_latent_record(b) for b in _read(next(lat.glob("*.array_record")))]
  for clip, rec in zip(clips, recs):
    tokens = tokenizer(shots.tagged_caption(clip["caption"], clip["shots"]))
    assert rec["caption"] == shots.tagged_caption(clip["caption"], clip["shots"])
    np.testing.assert_array_equal(rec["text_ids"], tokens["text_ids"])
    np.testing.assert_array_equal(rec["text_shot"], tokens["text_shot"])
    assert set(rec["text_shot"]) == {0, 1, 2}
    # the spans the tags say (to 10 ms: what the model reads, in training and sampling)
    np.testing.assert_allclose(rec["shot_spans"],
                               [[s["start"], s["end"]] for s in clip["shots"]], atol=0.005)
  config.data.format, config.data.path = "latents", str(lat)
  config.data.shuffle = False
  it = loader.make_iterator(config.data, tokenizer=tokenizer, global_batch_size=8, seed=0,
                            encoders=latents.encoder_identity(config, text_frozen=False))
  batch = next(it)
  np.testing.assert_array_equal(batch["text_shot"][0], recs[0]["text_shot"])
  plain = small_run_config()
  plain.text.max_length = 64
  with pytest.raises(latents.LatentRecordError, match="text.max_shots=2, this run uses 0"):
    loader.make_iterator(config.data, tokenizer=tokenizer, global_batch_size=8, seed=0,
                         encoders=latents.encoder_identity(plain, text_frozen=False))
