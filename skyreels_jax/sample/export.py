"""Media export: MP4 (H.264 + AAC, muxed with PyAV), WAV, and PNG contact sheets.

Arrays in, files out; nothing here knows about models. Video is uint8 (T, H, W, 3) RGB,
audio is float32 (S, C) in [-1, 1].

AAC notes (why `read_mp4` trims): the encoder adds 1024 samples of priming at the start and
pads the last frame to 1024 samples. The MP4 muxer records the priming in an edit list, which
FFmpeg's demuxer honours (decoded audio starts at sample 0), but the tail padding is decoded
as well; the stream's own duration is exact, so `read_mp4` cuts the decoded audio to it.
"""

import json
import math
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from skyreels_jax.data import shots as shots_lib


def _fps_fraction(fps: float) -> Fraction:
  # 7.5 -> 15/2, 29.97 -> 2997/100, 30000/1001 stays exact.
  rate = Fraction(fps).limit_denominator(1001)
  if rate <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  return rate


def _prepare_frames(video: np.ndarray, min_side: int) -> np.ndarray:
  """Nearest-neighbour upscale so the short side reaches `min_side`; pad to even size."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"video must be (T, H, W, 3), got {video.shape}")
  if video.dtype != np.uint8:
    raise ValueError(f"video must be uint8, got {video.dtype}")
  if video.shape[0] == 0:
    raise ValueError("video has no frames")
  short = min(video.shape[1], video.shape[2])
  if min_side and short < min_side:
    factor = math.ceil(min_side / short)
    video = video.repeat(factor, axis=1).repeat(factor, axis=2)
  # yuv420p subsamples chroma by 2 in both directions: width and height must be even.
  pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
  if pad_h or pad_w:
    video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  return np.ascontiguousarray(video)


def _prepare_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
  """(S, C) or (S,) float -> (C, num_samples) float32, zero-padded or cut to the video length."""
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim == 1:
    audio = audio[:, None]
  if audio.ndim != 2 or audio.shape[1] not in (1, 2):
    raise ValueError(f"audio must be (S,), (S, 1) or (S, 2), got {audio.shape}")
  audio = np.clip(audio, -1.0, 1.0)
  if audio.shape[0] < num_samples:
    audio = np.pad(audio, ((0, num_samples - audio.shape[0]), (0, 0)))
  return np.ascontiguousarray(audio[:num_samples].T)


def write_mp4(path, video: np.ndarray, fps: float, audio: np.ndarray | None = None,
              sample_rate: int = 16000, *, crf: int = 18, preset: str = "veryfast",
              min_side: int = 128) -> None:
  """Writes H.264 (yuv420p) video, plus AAC audio when `audio` is given, into one MP4.

  Frames whose short side is below `min_side` are upscaled by an integer factor (nearest
  neighbour) so tiny samples are watchable; `min_side=0` keeps the size. The audio track is
  zero-padded or cut to exactly `round(T * sample_rate / fps)` samples so both tracks last
  T / fps seconds. `sample_rate` must be one AAC accepts (8000..48000 standard rates).
  """
  frames = _prepare_frames(video, min_side)
  rate = _fps_fraction(fps)
  num_frames, height, width, _ = frames.shape
  with av.open(str(path), mode="w", format="mp4") as container:
    vstream = container.add_stream("libx264", rate=rate)
    vstream.width, vstream.height = width, height
    vstream.pix_fmt = "yuv420p"
    vstream.codec_context.time_base = 1 / rate
    vstream.options = {"crf": str(crf), "preset": preset}
    astream, wave = None, None
    if audio is not None:
      num_samples = round(num_frames * sample_rate / rate)
      wave = _prepare_audio(audio, num_samples)
      layout = "mono" if wave.shape[0] == 1 else "stereo"
      astream = container.add_stream("aac", rate=int(sample_rate), layout=layout)
      astream.codec_context.time_base = Fraction(1, int(sample_rate))

    for i, frame in enumerate(frames):
      vframe = av.VideoFrame.from_ndarray(frame, format="rgb24")
      vframe.pts = i
      vframe.time_base = 1 / rate
      container.mux(vstream.encode(vframe))
    container.mux(vstream.encode(None))

    if astream is not None:
      _encode_audio(av, container, astream, wave, int(sample_rate))


def _encode_audio(av, container, astream, wave: np.ndarray, sample_rate: int) -> None:
  """Feeds (C, S) float32 to the AAC encoder in frames of its frame size, then flushes."""
  layout = "mono" if wave.shape[0] == 1 else "stereo"
  ctx = astream.codec_context
  frame_size = ctx.frame_size or 1024
  # FFmpeg's AAC encoder takes planar float; resample only if a build wants something else.
  resampler = None
  if ctx.format is not None and ctx.format.name != "fltp":
    resampler = av.AudioResampler(format=ctx.format.name, layout=layout, rate=sample_rate)
  for start in range(0, wave.shape[1], frame_size):
    chunk = np.ascontiguousarray(wave[:, start:start + frame_size])
    aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
    aframe.sample_rate = sample_rate
    aframe.pts = start
    aframe.time_base = Fraction(1, sample_rate)
    for out in (resampler.resample(aframe) if resampler else [aframe]):
      container.mux(astream.encode(out))
  container.mux(astream.encode(None))


def read_mp4(path) -> dict:
  """Decodes an MP4 into numpy: video uint8 (T, H, W, 3), audio float32 (S, C).

  Without an audio track, audio is (0, 0) and sample_rate 0. Durations are T / fps and
  S / sample_rate, with the AAC tail padding cut (see the module docstring).
  """
  with av.open(str(path)) as container:
    vstream = container.streams.video[0]
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    fps = float(rate)
    video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

  audio, sample_rate = np.zeros((0, 0), np.float32), 0
  with av.open(str(path)) as container:
    if container.streams.audio:
      astream = container.streams.audio[0]
      sample_rate = astream.codec_context.sample_rate
      chunks = []
      for frame in container.decode(audio=0):
        data = frame.to_ndarray()
        if not frame.format.is_planar:  # packed (1, S * C) -> (C, S)
          data = data.reshape(-1, len(frame.layout.channels)).T
        chunks.append(data.astype(np.float32))
      channels = astream.codec_context.channels
      audio = np.concatenate(chunks, axis=1).T if chunks else np.zeros((0, channels), np.float32)
      if astream.duration is not None and astream.time_base is not None:
        exact = round(float(astream.duration * astream.time_base) * sample_rate)
        audio = audio[:exact]
      audio = np.ascontiguousarray(audio)

  return dict(
      video=video,
      audio=audio,
      fps=fps,
      sample_rate=sample_rate,
      video_duration=video.shape[0] / fps,
      audio_duration=audio.shape[0] / sample_rate if sample_rate else 0.0,
  )


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
  """Writes float audio (S,) or (S, C) in [-1, 1] as 16-bit PCM WAV."""

  audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
  sf.write(str(path), audio, int(sample_rate), subtype="PCM_16", format="WAV")


LABEL_HEIGHT = 14  # pixels of the text band above each row when labels are given


def contact_sheet_tile_scale(videos, min_tile: int = 96) -> int:
  """The integer upscale making the smallest frame's short side at least `min_tile`."""
  short = min(min(v.shape[1], v.shape[2]) for v in videos)
  return max(1, math.ceil(min_tile / short))


def write_contact_sheet(path, videos: list, labels: list | None = None,
                        frames_per_row: int = 8, scale: int | None = None,
                        gap: int = 2) -> None:
  """One PNG: a row per video of `frames_per_row` evenly spaced frames, labels above rows.

  Tiles are nearest-neighbour upscaled by `scale` (default: smallest integer making tiles at
  least 96 px) and split by `gap` grey pixels. With tile = max frame size * scale and
  band = LABEL_HEIGHT if labels else 0, the sheet is `n * tile_w + (n - 1) * gap` wide
  (n = frames_per_row) and `rows * (tile_h + band) + (rows - 1) * gap` high. A video with
  fewer frames than `frames_per_row` shows all of them and leaves the rest of its row black.
  """

  videos = [np.asarray(v) for v in videos]
  if not videos:
    raise ValueError("no videos to draw")
  if labels is not None and len(labels) != len(videos):
    raise ValueError(f"{len(labels)} labels for {len(videos)} videos")
  scale = scale or contact_sheet_tile_scale(videos)
  tile_h = max(v.shape[1] for v in videos) * scale
  tile_w = max(v.shape[2] for v in videos) * scale
  band = LABEL_HEIGHT if labels is not None else 0
  row_h = tile_h + band + gap
  sheet = np.full((len(videos) * row_h - gap, frames_per_row * (tile_w + gap) - gap, 3), 64,
                  np.uint8)
  for r, video in enumerate(videos):
    count = min(frames_per_row, video.shape[0])
    picks = np.round(np.linspace(0, video.shape[0] - 1, count)).astype(int)
    y0 = r * row_h + band
    sheet[r * row_h:y0] = 0  # the label band
    for c in range(frames_per_row):
      x0 = c * (tile_w + gap)
      sheet[y0:y0 + tile_h, x0:x0 + tile_w] = 0
      if c < count:
        tile = video[picks[c]].repeat(scale, axis=0).repeat(scale, axis=1)
        sheet[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
  image = Image.fromarray(sheet)
  if labels is not None:
    draw = ImageDraw.Draw(image)
    for r, label in enumerate(labels):
      draw.text((2, r * row_h + 1), str(label), fill=(255, 255, 255))
  image.save(str(path), format="PNG")


def read_prompts(path: str) -> list[dict]:
  """[{"prompt": str, "seed": int | None, "shots": list | None}] from a TXT (a prompt a line,
  shot tags allowed) or JSONL file (lines {"prompt": ..., "seed": ..., "shots": [{start, end,
  text}, ...]}; "prompt" may be left out when "shots" is given); ValueError naming the line
  otherwise (the sampler's --prompt_file, train.sample_prompts)."""
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      if line.startswith("{"):
        try:
          row = json.loads(line)
          shots = row.get("shots")
          prompt = str(row["prompt"]) if shots is None or "prompt" in row else ""
          rows.append({"prompt": prompt, "seed": row.get("seed"), "shots": shots})
        except (ValueError, KeyError) as e:
          raise ValueError(f"line {n}: {e!r}") from None
      else:
        rows.append({"prompt": line, "seed": None, "shots": None})
  if not rows:
    raise ValueError("no prompts")
  return rows


def with_shots(rows: list[dict], config, shots: list[dict] | None = None) -> list[dict]:
  """Each row's "prompt" as the model reads it: with shots (the row's "shots", shot tags in
  its prompt, or `shots` for every row) the tagged caption of data/shots.prompt_text.
  ValueError naming the prompt when its shots do not fit the run's clips, or when the run
  was trained without data.shot_captions (its model never read a shot tag)."""
  duration = config.data.num_frames / config.data.fps
  for i, row in enumerate(rows):
    given = row.get("shots") or shots
    if not (given or "<shot" in row["prompt"]):
      continue
    if not config.data.shot_captions:
      raise ValueError(f"prompt {i} has shots, but this run was trained without "
                       "data.shot_captions (its model never read shot tags)")
    try:
      row["prompt"] = shots_lib.prompt_text(row["prompt"], given, duration)
    except shots_lib.ShotError as e:
      raise ValueError(f"prompt {i}: {e}") from None
  return rows
