"""Media decoding shared by ingestion (data_pipelines/build_records.py) and sampling
conditions (sample/conditions.py): PyAV audio resampled to a rate and channel count, video
frames picked at a frame rate, turned upright and fitted to a bucket resolution."""

from __future__ import annotations

import os

import av
import numpy as np
from PIL import Image, ImageOps

from skyreels_jax.data import buckets as buckets_lib


class AudioTrack:
  """Accumulates decoded audio frames, resampled to the target rate and channel count."""

  def __init__(self, sample_rate: int, channels: int):
    self.channels = channels
    self.start = None  # seconds of the first decoded sample
    self._resampler = av.AudioResampler(format="flt", layout="mono" if channels == 1
                                        else "stereo", rate=sample_rate)
    self._parts = []

  def add(self, frame) -> None:
    if self.start is None:
      self.start = float(frame.time or 0.0)
    for out in self._resampler.resample(frame):
      self._parts.append(out.to_ndarray().reshape(-1, self.channels))

  def finish(self) -> np.ndarray:
    if self.start is not None:
      for out in self._resampler.resample(None):
        self._parts.append(out.to_ndarray().reshape(-1, self.channels))
    if not self._parts:
      return np.zeros((0, self.channels), np.float32)
    audio = np.concatenate(self._parts).astype(np.float32)
    return np.clip(np.nan_to_num(audio), -1.0, 1.0)  # resampling can overshoot 1 a little.


class FrameSampler:
  """Picks, from frames arriving in display order, the frame nearest each time t0 + k / fps,
  turned upright, resized to cover the closest-aspect resolution and centre-cropped.
  `picked[k]`: which arriving frame (0, 1, ... in the order given) output frame k is, so a
  mask or source clip of the same frames can be cut alike (aligned_frames);
  `source_size`: the upright (height, width) of the frames given; `seen`: how many."""

  def __init__(self, fps: float, resolutions: list[tuple[int, int]]):
    self.fps, self.resolutions = fps, resolutions
    self.frames: list[np.ndarray] = []
    self.picked: list[int] = []
    self.t0 = self.size = self.source_size = self._prev = self._gap = None
    self.rotation = 0
    self.seen = 0

  def add(self, frame, t: float) -> None:
    index = self.seen
    self.seen += 1
    if self.t0 is None:
      self.t0 = t
      self.rotation = int(round(getattr(frame, "rotation", 0) or 0))
      h, w = (frame.width, frame.height) if abs(self.rotation) == 90 else (frame.height,
                                                                            frame.width)
      self.source_size = (h, w)
      self.size = buckets_lib.closest_resolution(h, w, self.resolutions)
    elif t <= self._prev[0]:
      return  # a repeated or out-of-order timestamp: keep the first frame shown.
    else:
      self._gap = t - self._prev[0]
    while (target := self.t0 + len(self.frames) / self.fps) <= t + 1e-9:
      use_prev = self._prev is not None and target - self._prev[0] < t - target
      self._take(self._prev if use_prev else (t, frame, index))
    self._prev = (t, frame, index)

  def finish(self, native_rate) -> None:
    """Targets within the last frame's display time (one native frame) take the last frame."""
    if self._prev is None:
      return
    duration = float(1 / native_rate) if native_rate else (self._gap or 1 / self.fps)
    while self.t0 + len(self.frames) / self.fps < self._prev[0] + duration - 1e-6:
      self._take(self._prev)

  def _take(self, prev) -> None:
    self.frames.append(self._pixels(prev[1]))
    self.picked.append(prev[2])

  def _pixels(self, frame) -> np.ndarray:
    h, w = self.size
    return cover(upright(frame.to_image(), self.rotation), h, w)


# A mask pixel is regenerated where its grey value, after the resize, is above this (white =
# regenerate, as the sampler's --mask): binarised after resizing, so a mask goes through
# exactly the pixels' geometry and comes out 0 / 1.
MASK_THRESHOLD = 127
STILL_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def mask_keep(gray: np.ndarray) -> np.ndarray:
  """Resized grey mask (..., H, W) uint8 -> keep mask uint8 (1 keep, 0 regenerate)."""
  return (np.asarray(gray) <= MASK_THRESHOLD).astype(np.uint8)


def aligned_frames(path: str, picked: list[int], height: int, width: int, *,
                   source_size: tuple[int, int], num_source: int,
                   mode: str = "RGB") -> np.ndarray:
  """The frames of `path` that a video's FrameSampler picked (`picked`, of its `num_source`
  frames of `source_size`), fitted to (height, width) as the video's: uint8 (n, H, W, 3), or
  (n, H, W) for mode "L" (masks). `path`: an image (static: n = 1), a folder of images (one
  per source frame, in name order) or a video (its frames in display order). ValueError,
  with the reason, when its frame size or count cannot match the video's."""
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(STILL_EXTS))
    images = (Image.open(os.path.join(path, n)) for n in names)
    count = len(names)
  elif path.lower().endswith(STILL_EXTS):
    images, count, picked = iter([Image.open(path)]), None, [0]
  else:
    images, count = video_images(path), None
  wanted = {i: None for i in picked}
  seen = 0
  for i, image in enumerate(images):
    seen += 1
    size = (image.height, image.width)
    if size != tuple(source_size):
      raise ValueError(f"{os.path.basename(path)} is {size[0]}x{size[1]}, the video "
                       f"{source_size[0]}x{source_size[1]}")
    if i in wanted:
      wanted[i] = cover(image.convert(mode), height, width)
  if count is None and picked != [0]:
    count = seen
  if count is not None and count != num_source:
    raise ValueError(f"{os.path.basename(path)} has {count} frames, the video {num_source}")
  if seen == 0:
    raise ValueError(f"{os.path.basename(path)}: no frames")
  return np.stack([wanted[i] for i in picked])


def video_images(path: str):
  """The upright frames of a video file as PIL images, in display order."""
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError(f"{os.path.basename(path)}: no video stream")
    rotation = None
    for frame in container.decode(video=0):
      if rotation is None:
        rotation = int(round(getattr(frame, "rotation", 0) or 0))
      yield upright(frame.to_image(), rotation)


def cover(image, height: int, width: int) -> np.ndarray:
  """Centre-crop to the aspect ratio of (height, width), then resize (bicubic): the one
  cover-crop of records, sampling conditions and references. `image`: a PIL image or a
  uint8 (H, W, 3) array; returns uint8 (height, width, 3)."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  return np.asarray(ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC))


_TURNS = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270,
          180: Image.Transpose.ROTATE_180, -180: Image.Transpose.ROTATE_180}


def upright(image: "Image.Image", rotation: int) -> "Image.Image":
  """Phones store portrait video as sideways frames plus a display rotation (degrees
  counterclockwise, PyAV's `frame.rotation`): apply it. Other angles are left alone."""
  return image.transpose(_TURNS[rotation]) if rotation in _TURNS else image


def padded_audio(audio: np.ndarray, first: int, n: int) -> np.ndarray:
  """audio[first:first + n], zero-padded where the span leaves the decoded samples."""
  out = np.zeros((n, audio.shape[1]), np.float32)
  lo, hi = max(first, 0), min(first + n, len(audio))
  if hi > lo:
    out[lo - first:hi - first] = audio[lo:hi]
  return out
