"""build_records on real media files: buckets, resampling, captions, skips, index, restarts."""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from data_pipelines import build_records, sidecars
from skyreels_jax.data import media as media_lib
from skyreels_jax.data import records

from media_files import (TONE_HZ, read_json, red_level, small_data_config,
                         write_media)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """(folder, {bad file: expected reason}) of every kind of input, good and bad."""
  folder = tmp_path_factory.mktemp("media")
  return folder, write_media(folder)


@pytest.fixture(scope="module")
def built(media, tmp_path_factory):
  """One build with two worker processes and chunks of 2 files (4 chunks)."""
  out = tmp_path_factory.mktemp("records")
  index = build_records.build(str(media[0]), str(out), small_data_config(), workers=2,
                              chunk_size=2)
  return out, index


def _records(out, bucket):
  """Decoded records of a bucket, through the shard list of index.json."""
  entry = read_json(out / "index.json")["buckets"][bucket]
  source = grain.sources.ArrayRecordDataSource([str(out / s["path"]) for s in entry["shards"]])
  return [records.decode_clip(source[i]) for i in range(len(source))]


def _peak_hz(audio, sample_rate):
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
  return np.fft.rfftfreq(len(audio), 1 / sample_rate)[np.argmax(spectrum)]


def test_skipped_lists_exactly_the_bad_files(built, media):
  out, index = built
  rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
  reasons = {row["path"]: row["reason"] for row in rows}
  assert sorted(reasons) == sorted(media[1])
  for path, expected in media[1].items():
    assert expected in reasons[path], (path, reasons[path])
  assert index["inputs"] == dict(total=9, used=4, skipped=5)


def test_index_counts_match_the_shards(built):
  out, index = built
  assert index == read_json(out / "index.json")
  assert index["geometry"] == dict(fps=8.0, sample_rate=8000, audio_channels=1,
                                   resolutions=[[16, 16], [16, 24], [24, 16]], durations=[1.0])
  counts = {name: (e["kind"], e["num_records"], e["without_audio"])
            for name, e in index["buckets"].items()}
  assert counts == {"16x24x8": ("video", 2, 0), "24x16x8": ("video", 1, 1),
                    "image_16x24": ("image", 1, 0), "audio_8000": ("audio", 2, 0)}
  assert index["totals"] == dict(num_records=6, video_records=3, image_records=1,
                                 audio_records=2, without_audio=1)
  for name, entry in index["buckets"].items():
    source = grain.sources.ArrayRecordDataSource([str(out / s["path"])
                                                  for s in entry["shards"]])
    assert len(source) == entry["num_records"] == sum(s["num_records"]
                                                      for s in entry["shards"])
    for clip in map(records.decode_clip, (source[i] for i in range(len(source)))):
      assert clip["kind"] == entry["kind"]
      if entry["kind"] != "audio":
        assert clip["video"].shape == (entry["num_frames"], entry["height"], entry["width"], 3)
      if clip["audio"] is not None:
        assert clip["audio"].shape == (entry["num_samples"], 1)
  shards = sorted(os.path.relpath(os.path.join(root, f), out)
                  for root, _, files in os.walk(out) for f in files
                  if f.endswith(".array_record"))
  assert shards == sorted(s["path"] for e in index["buckets"].values() for s in e["shards"])


def test_landscape_video_frames_audio_and_caption(built):
  out, _ = built
  clips = _records(out, "16x24x8")
  assert [c["source"] for c in clips] == ["land.mp4@0.000", "land.mp4@1.000"]
  for k, clip in enumerate(clips):
    assert clip["caption"] == "<text>a landscape</text>"
    assert clip["fps"] == 8.0 and clip["sample_rate"] == 8000
    # 16 fps source at 8 fps: record frame j of clip k is source frame 2 * (8k + j).
    expected_red = [red_level(2 * (8 * k + j)) for j in range(8)]
    np.testing.assert_allclose(clip["video"][:, 8, 12, 0], expected_red, atol=8)
    # Cover-resize 64x48 -> 24x18, centre crop to 16 rows: the green quarter stays top-left.
    assert clip["video"][:, 2, 2, 1].min() > 200 and clip["video"][:, 13, 20, 1].max() < 60
    # 44.1 kHz stereo in, 8 kHz mono out, the tone where it was.
    assert clip["audio"].shape == (8000, 1)
    assert abs(_peak_hz(clip["audio"][:, 0], 8000) - TONE_HZ) <= 2
    assert np.abs(clip["audio"][1000:7000]).max() > 0.3


def test_vertical_video_without_audio_goes_to_the_tall_bucket(built):
  (clip,) = _records(built[0], "24x16x8")
  assert clip["source"] == "sub/tall.mp4@0.000"
  assert clip["audio"] is None and clip["sample_rate"] is None
  assert clip["caption"] == "<text>a tall one</text><bgm>piano</bgm>"
  assert clip["video"][:, 3, 2, 1].min() > 200   # green quarter, top-left


def test_image_and_audio_records(built):
  (image,) = _records(built[0], "image_16x24")
  assert image["kind"] == "image" and image["video"].shape == (1, 16, 24, 3)
  np.testing.assert_allclose(image["video"], 200, atol=2)
  assert image["caption"] == "<text>a grey picture</text><sfx>none</sfx>"  # tags kept
  sounds = _records(built[0], "audio_8000")
  assert [s["source"] for s in sounds] == ["sub/tone.wav@0.000", "sub/tone.wav@1.000"]
  for sound in sounds:
    assert sound["kind"] == "audio" and sound["sample_rate"] == 8000 and sound["caption"] == ""
    assert sound["audio"].shape == (8000, 1)
    assert abs(_peak_hz(sound["audio"][:, 0], 8000) - TONE_HZ) <= 2
    # 0.5 amplitude in both channels: the mono mix keeps a clear tone, still in range.
    assert 0.3 < np.abs(sound["audio"]).max() <= 1.0


def test_stereo_output_keeps_both_channels(media, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  os.symlink(media[0] / "sub" / "tone.wav", src / "tone.wav")
  index = build_records.build(str(src), str(tmp_path / "out"),
                              small_data_config(audio_channels=2, sample_rate=16000))
  clips = _records(tmp_path / "out", "audio_16000")
  assert index["inputs"]["used"] == 1 and len(clips) == 2
  assert clips[0]["audio"].shape == (16000, 2)
  np.testing.assert_allclose(clips[0]["audio"][:, 0], clips[0]["audio"][:, 1], atol=1e-6)


def test_manifest_captions_and_paths(media, tmp_path):
  folder = media[0]
  manifest = folder / "manifest.jsonl"
  manifest.write_text("\n".join(json.dumps(row) for row in [
      dict(path="land.mp4", text="from the manifest", sfx="", dialogue="hello"),
      dict(path="pic.png", caption="a plain caption"),
      dict(path="sub/tone.wav"),                      # no caption: none in a sidecar either
      dict(path="missing.mp4", text="gone"),
  ]) + "\n")
  try:
    index = build_records.build(str(manifest), str(tmp_path / "out"), small_data_config())
  finally:
    manifest.unlink()  # the folder is shared with the session build
  out = tmp_path / "out"
  assert index["inputs"] == dict(total=4, used=3, skipped=1)
  assert {c["caption"] for c in _records(out, "16x24x8")} == {
      "<text>from the manifest</text><dialogue>hello</dialogue>"}
  assert _records(out, "image_16x24")[0]["caption"] == "<text>a plain caption</text>"
  assert [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()] == [
      dict(path="missing.mp4", reason="file not found")]


def test_csv_manifest_and_caption_rules(tmp_path):
  (tmp_path / "a.csv").write_text("path,text,sfx,singing\nx/v.mp4,a dog,barks,\n"
                                  "w.wav,,,la la\n")
  rows = build_records.list_inputs(str(tmp_path / "a.csv"))
  assert [(r["rel"], r["caption"]) for r in rows] == [
      ("w.wav", "<singing>la la</singing>"), ("x/v.mp4", "<text>a dog</text><sfx>barks</sfx>")]
  assert rows[1]["path"] == str(tmp_path / "x" / "v.mp4")
  assert sidecars.caption_from_text("  plain  ") == "<text>plain</text>"
  assert sidecars.caption_from_text("<sfx>rain</sfx>") == "<sfx>rain</sfx>"


def test_upright_applies_the_display_rotation():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.zeros((48, 64, 3), np.uint8)
  pixels[0, -1] = 255  # top-right corner of a sideways frame
  turned = np.asarray(media_lib.upright(Image.fromarray(pixels), 90))
  assert turned.shape == (64, 48, 3) and turned[0, 0, 0] == 255  # 90 deg counterclockwise
  turned = np.asarray(media_lib.upright(Image.fromarray(pixels), -90))
  assert turned.shape == (64, 48, 3) and turned[-1, -1, 0] == 255
  assert media_lib.upright(Image.fromarray(pixels), 0).size == (64, 48)


def _mtimes(out):
  return {os.path.relpath(os.path.join(root, f), out): os.stat(os.path.join(root, f)).st_mtime_ns
          for root, _, files in os.walk(out) for f in files
          if f.endswith((".array_record", ".json")) and f != "index.json"}


def test_restart_redoes_only_missing_chunks(media, tmp_path):
  out = tmp_path / "out"
  first = build_records.build(str(media[0]), str(out), small_data_config(), chunk_size=2)
  before = _mtimes(out)
  assert sorted(p for p in before if p.startswith("_chunks")) == [
      f"_chunks/chunk-0000{i}.json" for i in range(5)]
  assert build_records.build(str(media[0]), str(out), small_data_config(), chunk_size=2) == first
  assert _mtimes(out) == before  # nothing redone

  os.remove(out / "_chunks" / "chunk-00003.json")  # sub/tall.mp4 and sub/tone.wav
  assert build_records.build(str(media[0]), str(out), small_data_config(), chunk_size=2) == first
  after = _mtimes(out)
  changed = sorted(p for p in after if after[p] != before.get(p))
  assert changed == ["24x16x8/chunk-00003.array_record",
                     "24x16x8/chunk-00003.array_record.sources.json", "_chunks/chunk-00003.json",
                     "audio_8000/chunk-00003.array_record",
                     "audio_8000/chunk-00003.array_record.sources.json"]
  # Each shard's sidecar lists its records' sources in order (in-context references).
  from array_record.python import array_record_module
  from skyreels_jax.data import records, references
  for shard in sorted(out.glob("*/chunk-*.array_record")):
    reader = array_record_module.ArrayRecordReader(str(shard))
    want = [records.decode_clip(r)["source"] for r in reader.read_all()]
    reader.close()
    assert json.loads(open(references.sidecar_path(str(shard))).read()) == want

  with pytest.raises(ValueError, match="another geometry"):
    build_records.build(str(media[0]), str(out), small_data_config(fps=4.0), chunk_size=2)


def test_cli_exits_2_when_nothing_is_usable(media, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "broken.mp4").write_bytes((media[0] / "sub" / "corrupt.mp4").read_bytes())
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.build_records", f"--src={src}",
       f"--out={tmp_path / 'out'}", "--config.data.durations=(1.0,)"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "no usable input" in result.stderr and "Traceback" not in result.stderr
  assert [json.loads(line)["path"] for line in
          (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()] == ["broken.mp4"]


def _encode_tone(path, codec: str, rate: int = 48000, seconds: float = 1.5, **options):
  """A 1 kHz stereo tone in `path`'s container with `codec` (PyAV, as real corpora have;
  ffmpeg's own Vorbis encoder is flagged experimental)."""
  import av  # pylint: disable=g-import-not-at-top
  wave = (0.4 * np.sin(2 * np.pi * TONE_HZ * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32)
  with av.open(str(path), "w", **options) as out:
    stream = out.add_stream(codec, rate=rate, options={"strict": "experimental"})
    stream.layout = "stereo"
    for start in range(0, len(wave), 960):
      chunk = wave[start:start + 960]
      frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp",
                                         layout="stereo")
      frame.sample_rate, frame.pts = rate, start
      out.mux(stream.encode(frame))
    out.mux(stream.encode())


def test_real_corpus_audio_formats_are_probed_not_guessed(tmp_path):
  """Ogg Vorbis, Opus, M4A / AAC and an audio-only .mp4 are audio records; a file no
  decoder takes is skipped with its reason; nothing is silently left out."""
  src = tmp_path / "src"
  src.mkdir()
  _encode_tone(src / "bell.ogg", "vorbis")
  _encode_tone(src / "voice.opus", "libopus")
  _encode_tone(src / "track.m4a", "aac", format="mp4")
  _encode_tone(src / "sound_only.mp4", "aac")
  (src / "data.bin").write_bytes(b"\0" * 64)
  index = build_records.build(str(src), str(tmp_path / "out"), small_data_config())
  assert index["inputs"] == dict(total=5, used=4, skipped=1)
  audio = _records(tmp_path / "out", "audio_8000")
  assert sorted(c["source"].split("@")[0] for c in audio) == [
      "bell.ogg", "sound_only.mp4", "track.m4a", "voice.opus"]
  for clip in audio:
    assert abs(_peak_hz(clip["audio"][:, 0], clip["sample_rate"]) - TONE_HZ) < 20
  skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text()
             .splitlines()]
  assert [s["path"] for s in skipped] == ["data.bin"]
  assert "unsupported file type" in skipped[0]["reason"]


@pytest.mark.parametrize("args, message", [
    (["-m", "data_pipelines.build_records", "--src=/no/such", "--out=OUT"], "--src '/no/such'"),
    (["-m", "data_pipelines.build_records", "--src=/no/such", "--out=OUT", "--workers=x"],
     "--workers=x"),
    (["-m", "data_pipelines.encode_latents", "--data=/no/such", "--out=OUT",
      "--config=configs/tiny.py"], "/no/such"),
    (["-m", "data_pipelines.synthetic", "--out=OUT", "--num_clips=0"], "num_clips (0)"),
])
def test_pipeline_user_errors_are_one_line_and_status_2(tmp_path, args, message):
  args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
  proc = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
