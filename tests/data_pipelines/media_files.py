"""Small real media files (written with PyAV / soundfile / PIL) for the build_records tests.

A helper module rather than a conftest: tests/conftest.py is imported as `conftest` by the
tests of this folder, and a second conftest here would shadow it.
"""

import json
import os

import numpy as np

TONE_HZ = 1000.0
SOURCE_RATE = 44100


def small_data_config(**overrides):
  """Tiny geometry: 16x16, 16x24 and 24x16 at 8 fps, 1 s clips, 8 kHz mono."""
  from configs import tiny
  data = tiny.get_config().data
  data.resolutions = ((16, 16), (16, 24), (24, 16))
  data.durations = (1.0,)
  data.fps, data.sample_rate, data.audio_channels = 8.0, 8000, 1
  # write_video's frames change brightness every frame (to tell frames apart), which the
  # cut detector rightly calls cuts; the shot tests (test_cuts.py) turn it on.
  data.cut_threshold = 0.0
  for key, value in overrides.items():
    data[key] = value
  return data


def red_level(i: int) -> int:
  """Red value of source frame i: neighbouring frames differ by at least 37 levels, so a
  frame picked one off shows, codec error notwithstanding (a few levels)."""
  return 37 * i % 256


def write_video(path, *, width, height, fps, seconds, audio_rate=None, channels=2):
  """H.264 (+ AAC, a TONE_HZ sine) MP4: frame i is red_level(i) red, top-left quarter green."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), "w") as out:
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    audio = None
    if audio_rate:
      audio = out.add_stream("aac", rate=audio_rate)
      audio.layout = "stereo" if channels == 2 else "mono"
    for i in range(int(round(seconds * fps))):
      img = np.zeros((height, width, 3), np.uint8)
      img[..., 0] = red_level(i)
      img[:height // 2, :width // 2, 1] = 255
      out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
    out.mux(video.encode())
    if audio is not None:
      n = int(seconds * audio_rate)
      wave = (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / audio_rate)).astype(np.float32)
      planes = np.repeat(wave[None], channels, axis=0)
      for start in range(0, n, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, start:start + 1024]),
                                           format="fltp", layout=audio.layout.name)
        frame.sample_rate, frame.pts = audio_rate, start
        out.mux(audio.encode(frame))
      out.mux(audio.encode())


def write_media(folder) -> dict[str, str]:
  """Every kind of input, good and bad; returns the expected skip reason (a substring) of
  each bad file by relative path."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sub = folder / "sub"
  sub.mkdir(parents=True)
  # 2.5 s at 16 fps (resampled to 8: every other frame), 44.1 kHz stereo sound.
  write_video(folder / "land.mp4", width=64, height=48, fps=16, seconds=2.5,
              audio_rate=SOURCE_RATE)
  (folder / "land.txt").write_text("a landscape\n")
  write_video(sub / "tall.mp4", width=48, height=64, fps=8, seconds=1.5)
  (sub / "tall.json").write_text(json.dumps(dict(text="a tall one", sfx="", bgm="piano")))
  data = (folder / "land.mp4").read_bytes()
  (sub / "trunc.mp4").write_bytes(data[:len(data) // 2])
  (sub / "corrupt.mp4").write_text("this is not a video\n" * 20)
  write_video(sub / "short.mp4", width=32, height=32, fps=8, seconds=0.5)
  Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(folder / "pic.png")
  (folder / "pic.txt").write_text("<text>a grey picture</text><sfx>none</sfx>")
  t = np.arange(int(2.3 * SOURCE_RATE)) / SOURCE_RATE
  tone = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
  sf.write(str(sub / "tone.wav"), np.stack([tone, tone], axis=1), SOURCE_RATE)
  (folder / "notes.md").write_text("not media: listed as skipped")
  (sub / "orphan.txt").write_text("a caption whose media file is gone")
  return {"sub/trunc.mp4": "cannot open", "sub/corrupt.mp4": "cannot open",
          "sub/short.mp4": "shorter than every duration bucket",
          "notes.md": "unsupported file type (.md", "sub/orphan.txt": "no media file"}


def read_json(path):
  with open(os.fspath(path), encoding="utf-8") as f:
    return json.load(f)
