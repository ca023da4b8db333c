"""The on-disk clip record: one msgpack blob per ArrayRecord entry, with a schema version.

A clip is a dict:
  video        uint8   (T, H, W, 3)
  audio        float32 (S, C), values in [-1, 1]
  fps          float   video frames per second
  sample_rate  int     audio samples per second
  caption      str     structured caption (`<text>...</text><sfx>...</sfx>`, SPEC section 3)
  bounces      float32 (N,) optional: bounce times in seconds (synthetic ground truth)

Audio covers the same time span as the video: S = T / fps * sample_rate, give or take one
video frame. Any change to this layout bumps SCHEMA_VERSION; readers reject other versions.
"""

import math
from typing import Any

from flax import serialization
import numpy as np

SCHEMA_VERSION = 1

_REQUIRED = ("video", "audio", "fps", "sample_rate", "caption")
_OPTIONAL = ("bounces",)


class RecordError(ValueError):
  """A record that cannot be used: corrupt bytes, wrong version, or invalid fields."""


def encode_clip(clip: dict[str, Any]) -> bytes:
  """Validates `clip` and serialises it (with the schema version) to bytes."""
  clip = _validated(dict(clip))
  payload = dict(clip, schema_version=SCHEMA_VERSION)
  return serialization.msgpack_serialize(payload)


def decode_clip(data: bytes) -> dict[str, Any]:
  """Parses and validates a record written by `encode_clip`; raises RecordError otherwise."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise RecordError(f"record must be bytes, got {type(data).__name__}")
  try:
    payload = serialization.msgpack_restore(bytes(data))
  except Exception as e:  # msgpack raises several unrelated types on corrupt input.
    raise RecordError(f"corrupt record ({type(e).__name__}: {e})") from e
  if not isinstance(payload, dict):
    raise RecordError(f"corrupt record: top level is {type(payload).__name__}, not a dict")
  version = payload.pop("schema_version", None)
  if version != SCHEMA_VERSION:
    raise RecordError(
        f"record schema_version is {version!r}; this reader understands {SCHEMA_VERSION}")
  return _validated(payload)


def _validated(clip: dict[str, Any]) -> dict[str, Any]:
  """Checks every field and returns the clip with canonical Python/numpy types."""
  missing = [k for k in _REQUIRED if k not in clip]
  if missing:
    raise RecordError(f"record is missing fields {missing}")
  unknown = sorted(set(clip) - set(_REQUIRED) - set(_OPTIONAL))
  if unknown:
    raise RecordError(f"record has unknown fields {unknown} (bump SCHEMA_VERSION to add fields)")

  video = _array(clip["video"], "video", np.uint8, ndim=4)
  if video.shape[-1] != 3:
    raise RecordError(f"video must have 3 colour channels, got shape {video.shape}")
  if min(video.shape) == 0:
    raise RecordError(f"video is empty: shape {video.shape}")

  audio = _array(clip["audio"], "audio", np.float32, ndim=2)
  if min(audio.shape) == 0:
    raise RecordError(f"audio is empty: shape {audio.shape}")
  if not np.all(np.isfinite(audio)) or np.max(np.abs(audio)) > 1.0:
    raise RecordError("audio must be finite and within [-1, 1]")

  fps = clip["fps"]
  if isinstance(fps, bool) or not isinstance(fps, (int, float, np.floating, np.integer)):
    raise RecordError(f"fps must be a number, got {type(fps).__name__}")
  fps = float(fps)
  if not (math.isfinite(fps) and fps > 0):
    raise RecordError(f"fps must be positive, got {fps}")

  sample_rate = clip["sample_rate"]
  if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
    raise RecordError(f"sample_rate must be an int, got {type(sample_rate).__name__}")
  sample_rate = int(sample_rate)
  if sample_rate <= 0:
    raise RecordError(f"sample_rate must be positive, got {sample_rate}")

  caption = clip["caption"]
  if not isinstance(caption, str):
    raise RecordError(f"caption must be a str, got {type(caption).__name__}")

  num_frames = video.shape[0]
  expected = num_frames / fps * sample_rate
  samples_per_frame = sample_rate / fps
  if abs(audio.shape[0] - expected) > samples_per_frame:
    raise RecordError(
        f"audio has {audio.shape[0]} samples but {num_frames} frames at {fps} fps and "
        f"{sample_rate} Hz need {expected:.0f} (+- {samples_per_frame:.0f})")

  out = dict(video=video, audio=audio, fps=fps, sample_rate=sample_rate, caption=caption)
  if "bounces" in clip:
    bounces = _array(clip["bounces"], "bounces", np.float32, ndim=1)
    duration = num_frames / fps
    if bounces.size and (not np.all(np.isfinite(bounces))
                         or bounces.min() < 0 or bounces.max() > duration):
      raise RecordError(f"bounces must be times within [0, {duration}] s")
    out["bounces"] = bounces
  return out


def _array(value: Any, name: str, dtype: type, *, ndim: int) -> np.ndarray:
  if not isinstance(value, np.ndarray):
    raise RecordError(f"{name} must be a numpy array, got {type(value).__name__}")
  if value.dtype != dtype:
    raise RecordError(f"{name} must be {np.dtype(dtype).name}, got {value.dtype}")
  if value.ndim != ndim:
    raise RecordError(f"{name} must have {ndim} dims, got shape {value.shape}")
  return value
