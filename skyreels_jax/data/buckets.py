"""Shape buckets: the finite set of (resolution, duration) shapes that batches come in.

Every batch holds one bucket's shape, so the train step compiles once per bucket. The set is
the product of `data.resolutions` ((height, width) pairs) and `data.durations` (seconds, at
`data.fps`) for video, one 1-frame bucket per resolution for images (T2I), and one bucket per
duration for sound alone (T2A). Empty lists mean the config's single geometry
(`data.height`, `data.width`, `data.num_frames`).

Records are written into one folder per bucket (`OUT/<bucket name>/*.array_record`, see
data_pipelines/build_records.py), so the loader can draw each batch from one bucket.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

KINDS = ("video", "image", "audio")


@dataclasses.dataclass(frozen=True)
class Bucket:
  kind: str              # video | image | audio
  height: int            # 0 for audio
  width: int             # 0 for audio
  num_frames: int        # 1 for images; the duration's frames for audio (its time span)
  num_samples: int       # audio samples of the bucket's duration (0 for images)

  @property
  def name(self) -> str:
    if self.kind == "audio":
      return f"audio_{self.num_samples}"
    if self.kind == "image":
      return f"image_{self.height}x{self.width}"
    return f"{self.height}x{self.width}x{self.num_frames}"


def resolutions(data_config) -> list[tuple[int, int]]:
  res = [tuple(int(v) for v in r) for r in data_config.get("resolutions", ())]
  return res or [(int(data_config.height), int(data_config.width))]


def durations_frames(data_config) -> list[int]:
  """Frame counts of the duration buckets, at data.fps (one more with data.endpoint_frame)."""
  durs = [float(d) for d in data_config.get("durations", ())]
  if not durs:
    return [int(data_config.num_frames)]
  extra = int(bool(data_config.get("endpoint_frame", False)))
  return [int(round(d * data_config.fps)) + extra for d in durs]


def samples_for_frames(num_frames: int, fps: float, sample_rate: int,
                       endpoint_frame: bool = False) -> int:
  """Audio samples of a clip of `num_frames` frames: `num_frames / fps` seconds, or, with an
  endpoint frame (frames at 0, 1/fps, ..., D: the `1 + 4k` frames of a causal video VAE),
  `(num_frames - 1) / fps` seconds."""
  return int(round((num_frames - int(endpoint_frame)) / fps * sample_rate))


def all_buckets(data_config) -> list[Bucket]:
  """Every bucket the config allows, videos first (sorted), then images, then audio."""
  fps, sr = float(data_config.fps), int(data_config.sample_rate)
  end = bool(data_config.get("endpoint_frame", False))
  frames = sorted(set(durations_frames(data_config)))
  res = resolutions(data_config)
  out = [Bucket("video", h, w, f, samples_for_frames(f, fps, sr, end)) for h, w in res
         for f in frames]
  out += [Bucket("image", h, w, 1, 0) for h, w in res]
  out += [Bucket("audio", 0, 0, f, samples_for_frames(f, fps, sr, end)) for f in frames]
  return out


def closest_resolution(height: int, width: int,
                       choices: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """The bucket resolution whose aspect ratio is closest (in log ratio) to height x width;
  ties go to the larger area."""
  if height <= 0 or width <= 0:
    raise ValueError(f"bad frame size {height}x{width}")
  aspect = math.log(width / height)
  return min(choices, key=lambda r: (abs(math.log(r[1] / r[0]) - aspect), -r[0] * r[1]))


def longest_fitting(num_frames_available: int, choices: Sequence[int]) -> int | None:
  """The longest duration bucket (in frames) that a clip of `num_frames_available` frames
  covers, or None when it is shorter than every bucket."""
  fitting = [f for f in choices if f <= num_frames_available]
  return max(fitting) if fitting else None
