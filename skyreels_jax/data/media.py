"""Media decoding shared by ingestion (data_pipelines/build_records.py) and sampling
conditions (sample/conditions.py): PyAV audio resampled to a rate and channel count, video
frames picked at a frame rate, turned upright and fitted to a bucket resolution."""

from __future__ import annotations

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
  turned upright, resized to cover the closest-aspect resolution and centre-cropped."""

  def __init__(self, fps: float, resolutions: list[tuple[int, int]]):
    self.fps, self.resolutions = fps, resolutions
    self.frames: list[np.ndarray] = []
    self.t0 = self.size = self._prev = self._gap = None
    self.rotation = 0

  def add(self, frame, t: float) -> None:
    if self.t0 is None:
      self.t0 = t
      self.rotation = int(round(getattr(frame, "rotation", 0) or 0))
      h, w = (frame.width, frame.height) if abs(self.rotation) == 90 else (frame.height,
                                                                            frame.width)
      self.size = buckets_lib.closest_resolution(h, w, self.resolutions)
    elif t <= self._prev[0]:
      return  # a repeated or out-of-order timestamp: keep the first frame shown.
    else:
      self._gap = t - self._prev[0]
    while (target := self.t0 + len(self.frames) / self.fps) <= t + 1e-9:
      use_prev = self._prev is not None and target - self._prev[0] < t - target
      self.frames.append(self._pixels(self._prev[1] if use_prev else frame))
    self._prev = (t, frame)

  def finish(self, native_rate) -> None:
    """Targets within the last frame's display time (one native frame) take the last frame."""
    if self._prev is None:
      return
    duration = float(1 / native_rate) if native_rate else (self._gap or 1 / self.fps)
    while self.t0 + len(self.frames) / self.fps < self._prev[0] + duration - 1e-6:
      self.frames.append(self._pixels(self._prev[1]))

  def _pixels(self, frame) -> np.ndarray:
    h, w = self.size
    return cover(upright(frame.to_image(), self.rotation), h, w)


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
