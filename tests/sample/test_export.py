"""MP4 / WAV / contact-sheet round trips (skyreels_jax/sample/export.py)."""

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from skyreels_jax.sample import export


def smooth_video(t=15, h=32, w=32):
  """A slowly moving colour gradient: smooth enough that H.264 keeps it close."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  frames = []
  for i in range(t):
    r = 128 + 100 * np.sin(2 * np.pi * (xx + 2 * i) / w)
    g = 128 + 100 * np.cos(2 * np.pi * yy / h)
    b = np.full_like(xx, 60.0 + 4 * i)
    frames.append(np.stack([r, g, b], axis=-1))
  return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def sine(freq, seconds, sample_rate, amp=0.5):
  return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sample_rate)) / sample_rate)
          ).astype(np.float32)


def peak_hz(x, sample_rate):
  # Skip the first/last 10 ms (AAC edges), window, and read the FFT peak.
  x = x[sample_rate // 100:-sample_rate // 100]
  spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
  return np.fft.rfftfreq(x.size, 1 / sample_rate)[np.argmax(spec)]


@pytest.mark.parametrize("fps,sample_rate", [(7.5, 16000), (8.0, 22050), (12.5, 8000), (24.0, 48000)])
def test_mp4_round_trip_mono(tmp_path, fps, sample_rate):
  video = smooth_video()
  audio = sine(440.0, video.shape[0] / fps, sample_rate)[:, None]
  path = tmp_path / "clip.mp4"
  export.write_mp4(path, video, fps, audio, sample_rate)
  out = export.read_mp4(path)

  assert out["video"].shape == (15, 128, 128, 3)  # 32 px upscaled x4 to reach min_side=128
  assert out["fps"] == pytest.approx(fps)
  assert out["sample_rate"] == sample_rate
  assert out["video_duration"] == pytest.approx(15 / fps)
  assert abs(out["audio_duration"] - out["video_duration"]) <= 1 / fps
  assert out["audio"].shape == (round(15 * sample_rate / fps), 1)
  with av.open(str(path)) as container:  # the durations the MP4 itself declares
    vstream, astream = container.streams.video[0], container.streams.audio[0]
    assert float(vstream.duration * vstream.time_base) == pytest.approx(15 / fps)
    assert float(astream.duration * astream.time_base) == pytest.approx(15 / fps, abs=1 / fps)

  reference = video.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)
  err = np.abs(out["video"].astype(np.float32) - reference).mean()
  assert err < 8.0, err
  assert abs(peak_hz(out["audio"][:, 0], sample_rate) - 440.0) < 3.0
  # AAC priming is removed by the MP4 edit list: no leading delay, amplitude kept.
  body = out["audio"][sample_rate // 10:-sample_rate // 10, 0]
  assert np.sqrt(np.mean(body ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
  # The sine (amplitude 0.5) first exceeds 0.25 after 1/12 of a period.
  first = np.argmax(np.abs(out["audio"][:, 0]) > 0.25)
  assert abs(first - sample_rate / (12 * 440.0)) <= 3


def test_mp4_round_trip_stereo_and_length_fix(tmp_path):
  fps, sample_rate = 10.0, 44100
  video = smooth_video(t=20)
  # 1.5 s of audio for a 2 s video: the writer pads it with silence to the video length.
  audio = np.stack([sine(440.0, 1.5, sample_rate), sine(1000.0, 1.5, sample_rate, 0.3)], -1)
  path = tmp_path / "stereo.mp4"
  export.write_mp4(path, video, fps, audio, sample_rate)
  out = export.read_mp4(path)
  assert out["audio"].shape == (2 * sample_rate, 2)
  assert out["audio_duration"] == pytest.approx(2.0, abs=1e-6)
  assert out["video_duration"] == pytest.approx(2.0)
  assert abs(peak_hz(out["audio"][:sample_rate, 0], sample_rate) - 440.0) < 3.0
  assert abs(peak_hz(out["audio"][:sample_rate, 1], sample_rate) - 1000.0) < 3.0
  assert np.abs(out["audio"][int(1.6 * sample_rate):]).max() < 0.02  # the padded tail is silent


def test_mp4_odd_size_no_upscale_and_no_audio(tmp_path):
  video = smooth_video(t=6, h=17, w=33)
  path = tmp_path / "odd.mp4"
  export.write_mp4(path, video, 29.97, None, min_side=0)
  out = export.read_mp4(path)
  assert out["video"].shape == (6, 18, 34, 3)  # padded to even for yuv420p
  assert out["fps"] == pytest.approx(29.97, abs=1e-6)
  assert out["audio"].shape == (0, 0) and out["sample_rate"] == 0
  err = np.abs(out["video"][:, :17, :33].astype(np.float32) - video).mean()
  assert err < 12.0, err


def test_mp4_upscale_factor_rounds_up(tmp_path):
  video = smooth_video(t=3, h=40, w=24)  # short side 24 -> ceil(128 / 24) = 6
  path = tmp_path / "tall.mp4"
  export.write_mp4(path, video, 8.0)
  assert export.read_mp4(path)["video"].shape == (3, 240, 144, 3)


def test_wav_round_trip(tmp_path):
  sample_rate = 16000
  audio = np.stack([sine(440.0, 0.5, sample_rate), -sine(220.0, 0.5, sample_rate)], -1)
  audio[0, 0] = 1.7  # out of range: clipped, not wrapped
  path = tmp_path / "a.wav"
  export.write_wav(path, audio, sample_rate)
  data, sr = sf.read(str(path), dtype="float32")
  info = sf.info(str(path))
  assert sr == sample_rate and info.subtype == "PCM_16"
  assert data.shape == audio.shape
  assert data[0, 0] == pytest.approx(1.0, abs=1e-4)
  assert np.abs(data[1:] - audio[1:]).max() < 1.0 / 32767 + 1e-6


def test_contact_sheet_size_and_content(tmp_path):
  rng = np.random.default_rng(0)
  videos = [rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
  path = tmp_path / "sheet.png"
  export.write_contact_sheet(path, videos, labels=["a", "b", "c"], frames_per_row=8)
  sheet = np.asarray(Image.open(path).convert("RGB"))
  tile, band, gap = 96, export.LABEL_HEIGHT, 2  # scale ceil(96 / 32) = 3
  assert sheet.shape == (3 * (tile + band) + 2 * gap, 8 * tile + 7 * gap, 3)
  # Row 1, tile 7 is the last frame of video 1, upscaled 3x (PNG is lossless).
  y0, x0 = (tile + band + gap) + band, 7 * (tile + gap)
  np.testing.assert_array_equal(sheet[y0:y0 + tile, x0:x0 + tile],
                                videos[1][15].repeat(3, 0).repeat(3, 1))
  # Row 0, tile 3 is frame round(3 * 15 / 7) = 6.
  np.testing.assert_array_equal(sheet[band:band + tile, 3 * (tile + gap):3 * (tile + gap) + tile],
                                videos[0][6].repeat(3, 0).repeat(3, 1))
  assert (sheet[band:band + tile, tile:tile + gap] == 64).all()  # grey gap between tiles
  # Labels draw white (antialiased) text into the band.
  assert sheet[:band].max() > 200 and (sheet[:band] > 128).any(axis=-1).sum() > 5

  short = [rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)]
  path2 = tmp_path / "sheet2.png"
  export.write_contact_sheet(path2, short, frames_per_row=4, scale=2, gap=0)
  sheet2 = np.asarray(Image.open(path2).convert("RGB"))
  assert sheet2.shape == (40, 4 * 60, 3)
  assert sheet2[:, 3 * 60:].max() == 0  # only 3 frames: the 4th tile stays black
