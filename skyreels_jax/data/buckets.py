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
from typing import Callable, Sequence

from skyreels_jax.core import ConfigError, check

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
  res = [tuple(int(v) for v in r) for r in data_config.resolutions]
  return res or [(int(data_config.height), int(data_config.width))]


def durations_frames(data_config) -> list[int]:
  """Frame counts of the duration buckets, at data.fps (one more with data.endpoint_frame)."""
  durs = [float(d) for d in data_config.durations]
  if not durs:
    return [int(data_config.num_frames)]
  extra = int(bool(data_config.endpoint_frame))
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
  end = bool(data_config.endpoint_frame)
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


def check_clip(config) -> None:
  """data.height / width / num_frames / ...: the single geometry and the batch."""
  d = config.data
  for f in ("height", "width", "num_frames", "sample_rate", "audio_channels", "batch_size"):
    check(d[f] >= 1, f"data.{f}", "must be >= 1")
  check(d.fps > 0, "data.fps", "must be positive")
  check(int(d.get("read_threads", 2)) >= 1, "data.read_threads", "must be >= 1")
  check(d.max_shots_per_clip >= 1, "data.max_shots_per_clip", "must be >= 1")
  check(d.shot_margin_seconds >= 0, "data.shot_margin_seconds", "must be >= 0")


def check_config(config, derive: Callable) -> None:
  """data.format, data.resolutions / durations / bucket_weights: every bucket must give
  latent and token grids the model can patch. `derive(config)` (config.derive, shapes only)
  is run on each bucket's geometry, so a bucket fails as the single geometry would."""
  d = config.data
  check(d.format in ("clips", "latents"), "data.format",
        f"{d.format!r} is not one of ['clips', 'latents']")
  for r in d.resolutions:
    check(len(r) == 2 and all(int(v) >= 1 for v in r), "data.resolutions",
          f"expected (height, width) pairs, got {r!r}")
  for s in d.durations:
    frames = float(s) * d.fps
    check(float(s) > 0 and abs(frames - round(frames)) < 1e-6, "data.durations",
          f"durations must be positive seconds of whole frames at data.fps={d.fps}, got {s!r}")
  buckets = all_buckets(d)
  names = {b.name for b in buckets}
  unknown = sorted(set(d.bucket_weights.keys()) - names)
  check(not unknown, "data.bucket_weights", f"unknown buckets {unknown}; this config's "
        f"buckets: {sorted(names)}")
  check(all(float(w) >= 0 for w in d.bucket_weights.values()), "data.bucket_weights",
        "weights must be >= 0")
  for b in buckets:
    if b.kind == "audio":
      continue
    probe = config.copy_and_resolve_references()
    probe.data.height, probe.data.width = b.height, b.width
    probe.data.num_frames = b.num_frames if b.kind == "video" else probe.data.num_frames
    field = "data.resolutions" if (b.height, b.width) != (d.height, d.width) else "data.height"
    try:
      derive(probe)
    except ConfigError as e:
      raise ConfigError(field if b.kind == "image" or "frames" not in str(e)
                        else "data.durations", f"bucket {b.name}: {e}") from None
