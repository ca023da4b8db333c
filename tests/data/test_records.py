"""Record schema: exact round trip, and RecordError on anything wrong."""

from flax import serialization
import numpy as np
import pytest

from skyreels_jax.data import records


def _clip(**overrides):
  """4 frames of 6x5 at 8 fps with 500 stereo samples at 1000 Hz, then `overrides`."""
  rng = np.random.default_rng(0)
  clip = dict(
      video=rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8),
      audio=rng.uniform(-1, 1, (500, 2)).astype(np.float32),
      fps=8.0,
      sample_rate=1000,
      caption="<text>a red circle</text><sfx>a low beep</sfx>",
      bounces=np.array([0.1, 0.25], np.float32),
  )
  clip.update(overrides)
  return clip


def _raw(clip, **fields):
  """Serialises without validation, to build records that encode_clip would refuse."""
  return serialization.msgpack_serialize(
      dict(clip, schema_version=records.SCHEMA_VERSION, **fields))


def test_round_trip_is_exact():
  shots = [dict(start=0.0, end=0.25, text="a close-up", sfx="rain"),
           dict(start=0.25, end=0.5, text="a wide shot")]
  clip = _clip(source="a/b.mp4@1.5", shots=shots)
  out = records.decode_clip(records.encode_clip(clip))
  assert sorted(out) == sorted(set(clip) | {"kind"} | set(records.GIVEN_FIELDS))
  assert out["shots"] == shots
  assert out["kind"] == "video" and out["source"] == "a/b.mp4@1.5"
  for key in ("video", "audio", "bounces"):
    assert out[key].dtype == clip[key].dtype
    np.testing.assert_array_equal(out[key], clip[key])
  assert out["fps"] == 8.0 and isinstance(out["fps"], float)
  assert out["sample_rate"] == 1000 and isinstance(out["sample_rate"], int)
  assert out["caption"] == clip["caption"]


def test_bounces_are_optional():
  clip = _clip()
  del clip["bounces"]
  out = records.decode_clip(records.encode_clip(clip))
  assert out["bounces"] is None and out["source"] is None
  assert out["audio"].shape == (500, 2)


def test_kinds_round_trip():
  silent = records.decode_clip(records.encode_clip(_clip(audio=None, sample_rate=None)))
  assert silent["kind"] == "video" and silent["audio"] is None and silent["sample_rate"] is None
  image = records.decode_clip(records.encode_clip(
      dict(kind="image", video=_clip()["video"][:1], caption="<text>a cat</text>")))
  assert image["kind"] == "image" and image["video"].shape == (1, 6, 5, 3)
  assert image["audio"] is None and image["fps"] is None
  sound = records.decode_clip(records.encode_clip(
      dict(kind="audio", audio=_clip()["audio"], sample_rate=1000, caption="<bgm>x</bgm>")))
  assert sound["kind"] == "audio" and sound["video"] is None
  np.testing.assert_array_equal(sound["audio"], _clip()["audio"])


def test_schema_1_reads_as_video_with_sound():
  v1 = _clip()
  del v1["bounces"]
  out = records.decode_clip(serialization.msgpack_serialize(dict(v1, schema_version=1)))
  assert out["kind"] == "video" and out["audio"].shape == (500, 2)
  del v1["audio"]
  with pytest.raises(records.RecordError, match="missing fields.*audio"):
    records.decode_clip(serialization.msgpack_serialize(dict(v1, schema_version=1)))


@pytest.mark.parametrize("clip, message", [
    (dict(kind="image", video=np.zeros((2, 4, 4, 3), np.uint8), caption=""), "one frame"),
    (dict(kind="image", video=np.zeros((1, 4, 4, 3), np.uint8), audio=np.zeros((4, 1),
          np.float32), sample_rate=8, caption=""), "image record has no audio"),
    (dict(kind="audio", caption=""), "missing fields.*audio"),
    (dict(kind="audio", audio=np.zeros((4, 1), np.float32), caption=""),
     "missing fields.*sample_rate"),
    (dict(kind="audio", audio=np.zeros((4, 1), np.float32), sample_rate=8, caption="",
          video=np.zeros((1, 4, 4, 3), np.uint8)), "audio record has no video"),
    (dict(kind="film", video=np.zeros((1, 4, 4, 3), np.uint8), caption=""), "kind must be"),
    (dict(kind="video", video=np.zeros((1, 4, 4, 3), np.uint8), caption=""), "missing.*fps"),
])
def test_invalid_kinds(clip, message):
  with pytest.raises(records.RecordError, match=message):
    records.encode_clip(clip)


@pytest.mark.parametrize("data", [b"", b"\x00garbage", b"\xc1", bytes(range(256)),
                                  b"\x93\x01\x02\x03"])
def test_corrupt_bytes(data):
  with pytest.raises(records.RecordError):
    records.decode_clip(data)


def test_truncated_record():
  data = records.encode_clip(_clip())
  with pytest.raises(records.RecordError, match="corrupt"):
    records.decode_clip(data[:len(data) // 2])


def test_wrong_schema_version():
  with pytest.raises(records.RecordError, match="schema_version is 5"):
    records.decode_clip(serialization.msgpack_serialize(dict(_clip(), schema_version=5)))
  with pytest.raises(records.RecordError, match="schema_version is None"):
    records.decode_clip(serialization.msgpack_serialize(_clip()))


@pytest.mark.parametrize("overrides, message", [
    (dict(video=np.zeros((4, 6, 5, 3), np.float32)), "video must be uint8"),
    (dict(video=np.zeros((4, 6, 5), np.uint8)), "video must have 4 dims"),
    (dict(video=np.zeros((4, 6, 5, 4), np.uint8)), "3 colour channels"),
    (dict(video=np.zeros((0, 6, 5, 3), np.uint8)), "video is empty"),
    (dict(audio=np.zeros((500, 2), np.float64)), "audio must be float32"),
    (dict(audio=np.zeros((500,), np.float32)), "audio must have 2 dims"),
    (dict(audio=np.full((500, 2), 1.5, np.float32)), r"within \[-1, 1\]"),
    (dict(audio=np.zeros((300, 2), np.float32)), "audio has 300 samples"),
    (dict(fps="8"), "fps must be a number"),
    (dict(fps=-1.0), "fps must be positive"),
    (dict(sample_rate=1000.0), "sample_rate must be an int"),
    (dict(caption=b"bytes"), "caption must be a str"),
    (dict(bounces=np.array([9.0], np.float32)), "bounces must be times"),
    (dict(bounces=np.array([0.1], np.float64)), "bounces must be float32"),
    (dict(extra=1), "unknown fields"),
])
def test_invalid_fields(overrides, message):
  with pytest.raises(records.RecordError, match=message):
    records.decode_clip(_raw(_clip(**overrides)))
  with pytest.raises(records.RecordError, match=message):
    records.encode_clip(_clip(**overrides))


def test_missing_field():
  clip = _clip()
  del clip["caption"]
  with pytest.raises(records.RecordError, match="missing fields"):
    records.decode_clip(_raw(clip))


def test_audio_length_tolerance_is_one_frame():
  # 4 frames at 8 fps and 1000 Hz: 500 samples expected, one frame is 125 samples.
  for n in (375, 625):
    out = records.decode_clip(_raw(_clip(audio=np.zeros((n, 1), np.float32))))
    assert out["audio"].shape == (n, 1)
  for n in (374, 626):
    with pytest.raises(records.RecordError, match=f"audio has {n} samples"):
      records.decode_clip(_raw(_clip(audio=np.zeros((n, 1), np.float32))))


def test_given_conditions_round_trip():
  """Schema 3: mask (per frame or static), audio mask, source, references, instruction."""
  c = _clip()
  mask = np.ones((4, 6, 5), np.uint8)
  mask[1:, 2:4, 1:3] = 0
  clip = _clip(mask=mask, audio_mask=(np.arange(500) % 7 > 0).astype(np.uint8),
               source_video=c["video"][::-1].copy(),
               references=np.zeros((2, 6, 5, 3), np.uint8), instruction="make it blue")
  out = records.decode_clip(records.encode_clip(clip))
  for key in ("mask", "audio_mask", "source_video", "references"):
    np.testing.assert_array_equal(out[key], clip[key])
  assert out["instruction"] == "make it blue"
  static = records.decode_clip(records.encode_clip(_clip(mask=mask[:1])))
  assert static["mask"].shape == (1, 6, 5) and static["source_video"] is None


def test_schema_2_records_still_read():
  clip = _clip()
  data = serialization.msgpack_serialize(dict(clip, schema_version=2))
  out = records.decode_clip(data)
  assert out["mask"] is None and out["instruction"] is None
  np.testing.assert_array_equal(out["video"], clip["video"])


@pytest.mark.parametrize("overrides, message", [
    (dict(mask=np.ones((3, 6, 5), np.uint8)), "mask has shape"),
    (dict(mask=np.ones((4, 5, 6), np.uint8)), "mask has shape"),
    (dict(mask=np.full((4, 6, 5), 255, np.uint8)), "0 \\(generate\\) and 1"),
    (dict(mask=np.ones((4, 6, 5), np.float32)), "mask must be uint8"),
    (dict(audio_mask=np.ones((499,), np.uint8)), "audio_mask has 499 samples"),
    (dict(audio=None, sample_rate=None, audio_mask=np.ones((500,), np.uint8)),
     "audio_mask needs audio"),
    (dict(source_video=np.zeros((4, 6, 4, 3), np.uint8)), "source_video has shape"),
    (dict(references=np.zeros((1, 3, 5, 3), np.uint8)), "references have shape"),
    (dict(instruction=3), "instruction must be a str"),
])
def test_invalid_given_conditions(overrides, message):
  with pytest.raises(records.RecordError, match=message):
    records.encode_clip(_clip(**overrides))
  with pytest.raises(records.RecordError, match=message):
    records.decode_clip(_raw(_clip(), **overrides))


@pytest.mark.parametrize("shots, message", [
    ([dict(start=0.0, end=0.3, text="a"), dict(start=0.25, end=0.5, text="b")], "overlap"),
    ([dict(start=0.0, end=3.0, text="a")], "past the clip"),
    ([dict(start=0.4, end=0.2, text="a")], "start < end"),
    ([dict(start=0.0, end=0.5)], "missing"),
    ("0-1: a", "must be a list"),
])
def test_bad_shots_are_refused_by_name(shots, message):
  with pytest.raises(records.RecordError, match=message):
    records.encode_clip(_clip(shots=shots))
  with pytest.raises(records.RecordError, match=message):
    records.decode_clip(_raw(_clip(), shots=shots))
