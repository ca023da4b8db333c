"""Latent record schema: exact round trip (float32 and bfloat16), LatentRecordError on anything
wrong, and the encoder identity check."""

from flax import serialization
import ml_dtypes
import numpy as np
import pytest

from configs import tiny
from skyreels_jax.data import latents

ENCODERS = dict(video_ae=dict(kind="identity", spatial_factor=4),
                audio_ae=dict(kind="identity", hop=160, channels=1),
                text=dict(kind="tiny", max_length=6, frozen=False))
FROZEN = dict(ENCODERS, text=dict(kind="tiny", max_length=6, frozen=True))


def _record(**overrides):
  """A video with sound: latents (2, 3, 4, 5) and (7, 6), 6 text tokens, then `overrides`."""
  rng = np.random.default_rng(0)
  rec = dict(
      kind="video",
      video_latent=rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
      audio_latent=rng.normal(size=(7, 6)).astype(np.float32),
      text_ids=np.array([1, 5, 9, 0, 0, 0], np.int32),
      text_mask=np.array([1, 1, 1, 0, 0, 0], bool),
      caption="<text>a red circle</text>",
      source="synthetic-00000.array_record#3",
      encoders=ENCODERS,
  )
  rec.update(overrides)
  return rec


def _raw(rec, **fields):
  """Serialises without validation, to build records that encode_latent_record refuses."""
  payload = {k: v for k, v in rec.items() if v is not None}
  return serialization.msgpack_serialize(
      dict(payload, latent_schema_version=latents.LATENT_SCHEMA_VERSION, **fields))


def test_round_trip_is_exact():
  rec = _record()
  out = latents.decode_latent_record(latents.encode_latent_record(rec))
  assert sorted(out) == sorted(latents._FIELDS)  # pylint: disable=protected-access
  for key in ("video_latent", "audio_latent", "text_ids", "text_mask"):
    assert out[key].dtype == rec[key].dtype
    np.testing.assert_array_equal(out[key], rec[key])
  assert out["text_embedding"] is None
  assert (out["kind"], out["caption"], out["source"]) == ("video", rec["caption"], rec["source"])
  assert out["encoders"] == ENCODERS
  assert out["text_shot"] is None and out["shot_spans"] is None
  shots = dict(text_shot=np.arange(len(rec["text_mask"]), dtype=np.int32) % 3,
               shot_spans=np.array([[0.0, 0.5], [0.5, 1.0]], np.float32))
  out = latents.decode_latent_record(latents.encode_latent_record(dict(rec, **shots)))
  for key, value in shots.items():
    np.testing.assert_array_equal(out[key], value)
  with pytest.raises(latents.LatentRecordError, match="go together"):
    latents.encode_latent_record(dict(rec, text_shot=shots["text_shot"]))


def test_bfloat16_travels_as_uint16_bits():
  rec = _record(video_latent=_record()["video_latent"].astype(ml_dtypes.bfloat16),
                audio_latent=_record()["audio_latent"].astype(ml_dtypes.bfloat16))
  data = latents.encode_latent_record(rec)
  stored = serialization.msgpack_restore(data)
  assert stored["dtype"] == "bfloat16" and stored["video_latent"].dtype == np.uint16
  out = latents.decode_latent_record(data)
  assert out["video_latent"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out["video_latent"].view(np.uint16),
                                rec["video_latent"].view(np.uint16))
  np.testing.assert_array_equal(out["audio_latent"].astype(np.float32),
                                rec["audio_latent"].astype(np.float32))
  # Two bytes a value on disk: 2 * (120 + 42) fewer than the float32 record.
  assert len(latents.encode_latent_record(_record())) - len(data) >= 2 * (120 + 42)


def test_frozen_text_embedding_replaces_ids():
  emb = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
  rec = _record(text_ids=None, text_embedding=emb, encoders=FROZEN)
  out = latents.decode_latent_record(latents.encode_latent_record(rec))
  np.testing.assert_array_equal(out["text_embedding"], emb)
  np.testing.assert_array_equal(out["text_mask"], rec["text_mask"])
  assert out["text_ids"] is None and out["encoders"]["text"]["frozen"] is True


def test_kinds_round_trip():
  rec = _record()
  silent = latents.decode_latent_record(latents.encode_latent_record(_record(audio_latent=None)))
  assert silent["kind"] == "video" and silent["audio_latent"] is None
  image = latents.decode_latent_record(latents.encode_latent_record(
      _record(kind="image", video_latent=rec["video_latent"][:1], audio_latent=None)))
  assert image["video_latent"].shape == (1, 3, 4, 5)
  sound = latents.decode_latent_record(latents.encode_latent_record(
      _record(kind="audio", video_latent=None)))
  assert sound["video_latent"] is None
  np.testing.assert_array_equal(sound["audio_latent"], rec["audio_latent"])


@pytest.mark.parametrize("data, match", [
    (b"", "corrupt"),
    (b"\xc1\x00\xff", "corrupt"),
    (serialization.msgpack_serialize([1, 2]), "not a dict"),
    (serialization.msgpack_serialize({"kind": "video"}), "latent_schema_version is None"),
    ("text", "must be bytes"),
])
def test_corrupt_bytes(data, match):
  with pytest.raises(latents.LatentRecordError, match=match):
    latents.decode_latent_record(data)


def test_truncated_and_flipped_bytes_never_pass_silently():
  data = latents.encode_latent_record(_record())
  with pytest.raises(latents.LatentRecordError):
    latents.decode_latent_record(data[: len(data) // 2])
  for i in range(0, 120, 7):  # flips in the header region: parse, type or field errors
    flipped = bytearray(data)
    flipped[i] ^= 0xFF
    try:
      out = latents.decode_latent_record(bytes(flipped))
    except latents.LatentRecordError:
      continue
    # A flip inside array payload bytes parses; it must still be a valid record.
    assert out["video_latent"].shape == (2, 3, 4, 5)


def test_clip_records_are_refused():
  from skyreels_jax.data import records  # pylint: disable=g-import-not-at-top
  clip = records.encode_clip(dict(video=np.zeros((1, 2, 2, 3), np.uint8), fps=8.0,
                                  caption="x"))
  with pytest.raises(latents.LatentRecordError, match="clip record"):
    latents.decode_latent_record(clip)


@pytest.mark.parametrize("fields, match", [
    (dict(latent_schema_version=99), "latent_schema_version is 99"),
    (dict(dtype="float16"), "dtype must be one of"),
    (dict(dtype="bfloat16"), "stored as uint16"),
    (dict(extra=1), r"unknown fields \['extra'\]"),
])
def test_bad_header_fields(fields, match):
  payload = dict(_record(), latent_schema_version=latents.LATENT_SCHEMA_VERSION,
                 dtype="float32")
  payload.update(fields)
  with pytest.raises(latents.LatentRecordError, match=match):
    latents.decode_latent_record(serialization.msgpack_serialize(payload))


@pytest.mark.parametrize("overrides, match", [
    (dict(kind="movie"), "kind must be one of"),
    (dict(caption=None), "caption must be a str"),
    (dict(source=3), "source must be a str"),
    (dict(video_latent=None), "kind 'video': video_latent must be present"),
    (dict(kind="audio"), "kind 'audio': video_latent must be None"),
    (dict(kind="image"), "kind 'image': audio_latent must be None"),
    (dict(video_latent=np.zeros((2, 3, 4), np.float32)), "video_latent must have 4"),
    (dict(video_latent=np.zeros((0, 3, 4, 5), np.float32)), "non-empty"),
    (dict(audio_latent=np.zeros((7, 6), np.float64)), "float32 or bfloat16"),
    (dict(audio_latent=np.full((7, 6), np.nan, np.float32)), "NaN"),
    (dict(audio_latent=[[0.0]]), "must be a numpy array"),
    (dict(audio_latent=np.zeros((7, 6), ml_dtypes.bfloat16)), "share one dtype"),
    (dict(text_ids=None), "exactly one of text_ids"),
    (dict(text_embedding=np.zeros((6, 8), np.float32)), "exactly one of text_ids"),
    (dict(text_ids=np.zeros(6, np.int64)), "text_ids must be int32"),
    (dict(text_mask=np.ones(5, bool)), "text_ids .* and text_mask .* differ"),
    (dict(text_mask=None), "text_mask must be a numpy array"),
    (dict(text_ids=None, text_embedding=np.zeros((5, 8), np.float32), encoders=FROZEN),
     "text_embedding has 5 tokens, text_mask 6"),
    (dict(text_ids=None, text_embedding=np.zeros((6, 8), np.float32)), "frozen"),
    (dict(encoders=FROZEN), "frozen"),
    (dict(encoders=None), "encoders must be a dict"),
    (dict(encoders=dict(video_ae=dict(kind="identity"))), "encoders must be a dict with keys"),
    (dict(encoders=dict(ENCODERS, audio_ae=dict(hop=160))), "str 'kind'"),
])
def test_invalid_fields(overrides, match):
  rec = _record(**overrides)
  with pytest.raises(latents.LatentRecordError, match=match):
    latents.encode_latent_record(rec)
  with pytest.raises(latents.LatentRecordError, match=match):
    latents.decode_latent_record(_raw(rec, dtype="float32"))


def test_encoder_identity_of_a_config():
  c = tiny.get_config()
  ident = latents.encoder_identity(c, text_frozen=False)
  neutral = lambda d: {k: v for k, v in d.items()
                       if k not in ("encode_chunk", "decode_chunk", "dtype")}
  assert ident["video_ae"] == neutral(c.video_ae.to_dict()) and "path" in ident["video_ae"]
  assert ident["audio_ae"] == dict(neutral(c.audio_ae.to_dict()),
                                   channels=c.data.audio_channels)
  chunked = tiny.get_config()
  chunked.video_ae.encode_chunk = 4     # the same numbers: the same identity
  chunked.video_ae.dtype = chunked.audio_ae.dtype = "bfloat16"   # within the stated tolerance
  assert latents.encoder_identity(chunked, text_frozen=False) == ident
  assert ident["text"] == dict(c.text.to_dict(), frozen=False, shot_captions=False,
                               max_shots=0)
  latents.check_encoders(ident, latents.encoder_identity(tiny.get_config(), text_frozen=False))
  other = tiny.get_config()
  other.video_ae.spatial_factor = 8
  with pytest.raises(latents.LatentRecordError, match=r"video_ae.spatial_factor=4.* uses 8"):
    latents.check_encoders(ident, latents.encoder_identity(other, text_frozen=False))
  with pytest.raises(latents.LatentRecordError, match=r"text.frozen=False"):
    latents.check_encoders(ident, latents.encoder_identity(c, text_frozen=True))
