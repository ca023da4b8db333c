"""Sampling conditions for every task of SPEC section 3, built on the host from media files.

A Condition holds pixels and waveforms (the VAEs encode them inside the sampling program,
with frozen weights as arguments) and keep masks on the latent grids (1 = keep, 0 =
generate). Arrays carry a leading batch axis of 1: one condition serves every prompt of a
batch and is encoded once.

| task      | condition frames                          | video keep      | audio keep        |
|-----------|-------------------------------------------|-----------------|-------------------|
| t2av      | black                                     | 0               | 0                 |
| i2v       | the image at latent frame 0's pixels      | t = 0           | 0                 |
| extend    | the source video                          | t < K           | the kept span     |
| start_end | first / last image at latent 0 / T-1      | t = 0, T-1      | 0                 |
| inpaint   | the source video                          | 1 - mask (rule) | 0, or its own     |
|           | (an edit: the instruction as the prompt)  |                 | track (--audio_mask)|
| a_inpaint | the source video                          | 1               | its own track but |
|           |                                           |                 | the --audio_mask span|

References (any task): images and a video clip, resized to the run's frame size (one spatial
size, as the model needs), and an audio clip; prepended to the tokens as Concat(ref, ref, 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import av
import jax
import numpy as np
from PIL import Image

from skyreels_jax.data.media import (AudioTrack, FrameSampler, aligned_frames, cover, mask_keep,
                                     padded_audio)
from skyreels_jax.tasks.given import audio_keep, video_keep
from skyreels_jax.tasks.masks import video_task_mask

TASKS = ("t2av", "i2v", "extend", "start_end", "inpaint", "a_inpaint")


@dataclasses.dataclass
class Condition:
  task: str
  frames: np.ndarray                 # (1, F, H, W, 3) float32 in [-1, 1]
  keep_v: np.ndarray                 # (1, T, h, w, 1)
  audio: np.ndarray | None = None    # (1, S, C) waveform; None: silence
  keep_a: np.ndarray | None = None   # (1, Ta, 1); None: regenerate all
  ref_images: np.ndarray | None = None  # (N, F1, H, W, 3): each image as a short clip
  ref_video: np.ndarray | None = None   # (1, Fr, H, W, 3)
  audio_ref: np.ndarray | None = None   # (1, Sr, C)
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded in the JSON


def to_unit(pixels: np.ndarray) -> np.ndarray:
  return pixels.astype(np.float32) / 127.5 - 1.0


def latent_frame_pixels(geometry, temporal_factor: int, t: int) -> slice:
  """Pixel frames that latent frame t encodes: blocks of `temporal_factor` frames, or, for
  causal VAEs (Wan: F = 1 + factor * (T - 1)), frame 0 alone and then blocks."""
  num_frames, latent_t = geometry.num_frames, geometry.video_grid[0]
  if num_frames == latent_t * temporal_factor:
    return slice(t * temporal_factor, (t + 1) * temporal_factor)
  if t == 0:
    return slice(0, 1)
  return slice(1 + (t - 1) * temporal_factor, 1 + t * temporal_factor)


def _black(geometry) -> np.ndarray:
  g = geometry
  return -np.ones((1, g.num_frames, g.height, g.width, 3), np.float32)


def _mask(task: str, geometry, k: int | None = None) -> np.ndarray:
  g = geometry
  if task == "extend":
    t = np.arange(g.video_grid[0])[:, None, None, None]
    keep = np.broadcast_to(t < k, (*g.video_grid, 1)).astype(np.float32)
  else:
    keep = np.asarray(video_task_mask(task, jax.random.key(0), g.video_grid))
  return keep[None]


def text_to_video(geometry) -> Condition:
  return Condition("t2av", _black(geometry), np.zeros((1, *geometry.video_grid, 1), np.float32))


def image_to_video(geometry, temporal_factor: int, image: np.ndarray) -> Condition:
  """image: uint8 (H, W, 3) at the run's frame size."""
  frames = _black(geometry)
  frames[0, latent_frame_pixels(geometry, temporal_factor, 0)] = to_unit(image)
  return Condition("i2v", frames, _mask("i2v", geometry))


def start_end(geometry, temporal_factor: int, first: np.ndarray, last: np.ndarray) -> Condition:
  """The last image fills every pixel frame of the last latent frame: the frames a causal VAE
  sees for it, so its latent is the latent of a still of that image."""
  frames = _black(geometry)
  frames[0, latent_frame_pixels(geometry, temporal_factor, 0)] = to_unit(first)
  frames[0, latent_frame_pixels(geometry, temporal_factor, geometry.video_grid[0] - 1)] = (
      to_unit(last))
  return Condition("start_end", frames, _mask("start_end", geometry))


def _source(geometry, video: np.ndarray) -> np.ndarray:
  """The first F frames of a source clip (uint8 (n, H, W, 3)); a shorter clip holds its last
  frame."""
  n = geometry.num_frames
  idx = np.minimum(np.arange(n), len(video) - 1)
  return to_unit(video[idx])[None]


def _source_audio(geometry, audio: np.ndarray | None, channels: int) -> np.ndarray:
  out = np.zeros((1, geometry.num_samples, channels), np.float32)
  if audio is not None:
    n = min(len(audio), geometry.num_samples)
    out[0, :n] = audio[:n]
  return out


def extend(geometry, temporal_factor: int, fps: float, channels: int, video: np.ndarray,
           audio: np.ndarray | None, k: int) -> Condition:
  """Keeps latent frames t < k of the source and, when it has sound, the audio latents that
  end within those frames' time (continuation of both streams)."""
  g = geometry
  if not 1 <= k < g.video_grid[0]:
    raise ValueError(f"extend keeps 1 to {g.video_grid[0] - 1} latent frames, not {k}")
  kept_frames = latent_frame_pixels(g, temporal_factor, k - 1).stop
  if len(video) < kept_frames:
    raise ValueError(f"the source video has {len(video)} frames; keeping {k} latent frames "
                     f"needs {kept_frames}")
  keep_a = np.zeros((1, g.audio_length, 1), np.float32)
  if audio is not None:
    kept_samples = kept_frames / fps * (g.num_samples / (g.num_frames / fps))
    ends = (np.arange(g.audio_length) + 1) * g.num_samples / g.audio_length
    keep_a[0, ends <= kept_samples + 1e-6] = 1.0
  return Condition("extend", _source(g, video), _mask("extend", g, k),
                   _source_audio(g, audio, channels), keep_a)


def mask_to_grid(mask: np.ndarray, geometry, temporal_factor: int = 1) -> np.ndarray:
  """A mask at the run's frame size -> the keep mask (T, h, w, 1) on the latent grid, by
  the training rule (tasks/given.py: a latent cell is kept only where all its pixels are).
  `mask`: a grey image (H, W) (white = regenerate, static), or a keep mask uint8 (n, H, W)
  (1 keep; n = 1 static, else the frames of the clip: its first F frames, a shorter one
  holding its last frame)."""
  g = geometry
  keep = mask_keep(mask)[None] if mask.ndim == 2 else np.asarray(mask, np.uint8)
  if keep.shape[0] > 1:
    keep = keep[np.minimum(np.arange(g.num_frames), len(keep) - 1)]
  return video_keep(keep, g.video_grid, temporal_factor)


def inpaint(geometry, channels: int, video: np.ndarray, mask: np.ndarray,
            temporal_factor: int = 1, audio: np.ndarray | None = None,
            audio_keep_samples: np.ndarray | None = None) -> Condition:
  """Kept regions come from the source video (mask: see mask_to_grid; an edit is the same
  condition with the instruction as the prompt). The audio is regenerated, conditioned on
  the edited video (SPEC section 3), unless `audio_keep_samples` (S,) keeps part of the
  source's own track `audio` (--audio_mask)."""
  g = geometry
  keep_v = mask_to_grid(mask, g, temporal_factor)[None]
  return Condition("inpaint", _source(g, video), keep_v, *_audio_span(g, channels, audio,
                                                                      audio_keep_samples))


def _audio_span(geometry, channels: int, audio, keep_samples):
  """(waveform, keep_a): silence and all regenerated, or the source track with the latents
  all of whose samples are kept (tasks/given.audio_keep)."""
  g = geometry
  if keep_samples is None:
    return (_source_audio(g, None, channels), np.zeros((1, g.audio_length, 1), np.float32))
  keep = np.zeros((g.num_samples,), np.uint8)     # no source sound there: regenerated
  n = min(len(keep_samples), g.num_samples, 0 if audio is None else len(audio))
  keep[:n] = keep_samples[:n]
  return _source_audio(g, audio, channels), audio_keep(keep, g.audio_length)[None]


def audio_inpaint(geometry, channels: int, video: np.ndarray, audio: np.ndarray | None,
                  keep_samples: np.ndarray) -> Condition:
  """--video with --audio_mask alone: every frame kept, the sound regenerated where
  `keep_samples` is 0 and kept (the source's own track) elsewhere."""
  g = geometry
  return Condition("a_inpaint", _source(g, video), np.ones((1, *g.video_grid, 1), np.float32),
                   *_audio_span(g, channels, audio, keep_samples))


def add_references(cond: Condition, geometry, temporal_factor: int, *, images=(), video=None,
                   audio=None, vae_frames=None) -> Condition:
  """images: uint8 (H, W, 3) list; video: uint8 (n, H, W, 3); audio: (S, C) waveform, all at
  the run's geometry. An image is a clip of one latent frame (its pixels repeated over that
  frame's pixel frames); the video keeps its longest prefix the VAE accepts
  (`vae_frames(n)`, at most F frames)."""
  if images:
    span = latent_frame_pixels(geometry, temporal_factor, 0)
    length = span.stop - span.start
    cond.ref_images = np.stack([np.repeat(to_unit(im)[None], length, 0) for im in images])
  if video is not None:
    n = min(len(video), geometry.num_frames)
    n = vae_frames(n) if vae_frames is not None else n
    cond.ref_video = to_unit(video[:n])[None]
  if audio is not None:
    cond.audio_ref = np.asarray(audio[:geometry.num_samples], np.float32)[None]
  return cond


def causal_prefix(temporal_factor: int):
  """Longest valid clip length for a causal VAE (1 + factor * k frames)."""
  return lambda n: 1 + (n - 1) // temporal_factor * temporal_factor


def block_prefix(temporal_factor: int):
  return lambda n: max(n // temporal_factor * temporal_factor, temporal_factor)


# ------------------------------------------------------------------------------ media files

def read_image(path: str, height: int, width: int) -> np.ndarray:
  return cover(np.asarray(Image.open(path).convert("RGB")), height, width)


def read_mask(path: str, height: int, width: int) -> np.ndarray:
  """Grayscale (H, W) uint8, center-cropped and resized as the video frames are."""
  return cover(Image.open(path).convert("L"), height, width)


def read_video_mask(path: str, source: SourceVideo, *, height: int,
                    width: int) -> np.ndarray:
  """A --mask for --video: keep mask uint8 (n, H, W) (n = 1 for a PNG), frames picked and
  fitted exactly as `source`'s (read_video's; data/media.aligned_frames: same size and frame
  count as the video, binarised after resizing)."""
  gray = aligned_frames(path, source.picked, height, width, source_size=source.source_size,
                        num_source=source.num_source, mode="L")
  return mask_keep(gray)


class SourceVideo(NamedTuple):
  """read_video's result: the frames and sound at the run's geometry, and which source frames
  were picked (FrameSampler's `picked` / `source_size` / `seen`), so that a mask of the same
  source is cut alike without decoding the video again."""
  frames: np.ndarray               # uint8 (n, H, W, 3)
  audio: np.ndarray | None         # (S, C) float32, None without sound
  picked: list[int]
  source_size: tuple[int, int]
  num_source: int


def read_video(path: str, *, fps: float, height: int, width: int, sample_rate: int,
               channels: int) -> SourceVideo:
  """Frames uint8 (n, H, W, 3) at `fps` (nearest frame per time, center-cropped, bicubic) and
  its audio (S, C) at `sample_rate` aligned to the first frame, or None without sound. The
  dataset builder's decoders, so conditions look like training clips."""
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError(f"{path}: no video stream")
    vstream = container.streams.video[0]
    streams = [vstream] + list(container.streams.audio[:1])
    frames = FrameSampler(fps, [(height, width)])
    track = AudioTrack(sample_rate, channels) if len(streams) > 1 else None
    for packet in container.demux(*streams):
      for frame in packet.decode():
        if packet.stream.type == "audio":
          track.add(frame)
        elif frame.time is not None:
          frames.add(frame, frame.time)
    frames.finish(vstream.average_rate or vstream.guessed_rate)
  if not frames.frames:
    raise ValueError(f"{path}: no decodable video frames")
  video = np.stack(frames.frames)
  audio = None
  if track is not None:
    wave = track.finish()
    if len(wave):
      first = int(round((frames.t0 - track.start) * sample_rate))
      n = int(round(len(video) / fps * sample_rate))
      audio = padded_audio(wave, first, n)
  return SourceVideo(video, audio, frames.picked, frames.source_size, frames.seen)


def read_audio(path: str, *, sample_rate: int, channels: int) -> np.ndarray:
  """(S, C) float32 at `sample_rate` (PyAV's resampler, as for video soundtracks)."""
  with av.open(path) as container:
    if not container.streams.audio:
      raise ValueError(f"{path}: no audio stream")
    track = AudioTrack(sample_rate, channels)
    for frame in container.decode(audio=0):
      track.add(frame)
  return track.finish()
