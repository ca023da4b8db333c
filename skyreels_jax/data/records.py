"""The on-disk clip record: one msgpack blob per ArrayRecord entry, with a schema version.

A clip is a dict (schema 4):
  kind         str     "video" (a clip, with or without sound), "image" (a still: one frame)
                       or "audio" (sound only)
  video        uint8   (T, H, W, 3); T = 1 for an image; None for audio
  audio        float32 (S, C), values in [-1, 1]; None for an image or a silent video
  fps          float   video frames per second (None for audio; images keep the value the
                       builder resampled to, for bookkeeping)
  sample_rate  int     audio samples per second (None without audio)
  caption      str     structured caption (`<text>...</text><sfx>...</sfx>`, SPEC section 3)
  source       str     optional: where the clip came from (`path@start_seconds`)
  bounces      float32 (N,) optional: bounce times in seconds (synthetic ground truth)
  shots        list of {start, end, text, sfx?} (schema 4, optional; video records): the
               clip's shots, seconds on its own timeline, sorted, not overlapping
               (skyreels_jax/data/shots.py)
Given conditions (schema 3, all optional; SPEC section 3: 1 = keep, 0 = generate):
  mask         uint8 (T, H, W) or (1, H, W) (static) of 0 / 1: what an inpainting or edit
               keeps, on the video's own frames and pixels
  audio_mask   uint8 (S,) of 0 / 1: the audio samples kept (the rest is regenerated)
  source_video uint8 (T, H, W, 3): the clip before the edit (an edit pair; `video` is the
               edited target, `mask` where they may differ)
  references   uint8 (N, H, W, 3): stills of the subject a reference-guided inpainting fills
               the mask with, at the video's size
  instruction  str: the edit's text ("make the red circle blue")

A video's audio covers the same time span as its frames: S = T / fps * sample_rate, give or
take one video frame. Any change to this layout bumps SCHEMA_VERSION. Readers take the
versions in READABLE_VERSIONS (schema 1, the first issue's audio-video clips, reads as a
"video" with sound; schema 2 has no given conditions, schema 3 no shots) and reject others.
"""

import dataclasses
import math
from typing import Any

from flax import serialization
import numpy as np

from skyreels_jax.data import shots as shots_lib

SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
KINDS = ("video", "image", "audio")

GIVEN_FIELDS = ("mask", "audio_mask", "source_video", "references", "instruction")
_FIELDS = ("kind", "video", "audio", "fps", "sample_rate", "caption", "source",
           "bounces", "shots") + GIVEN_FIELDS


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """Stands in, in a data pipeline, for a record that failed decoding or preprocessing."""
  reason: str


class RecordError(ValueError):
  """A record that cannot be used: corrupt bytes, wrong version, or invalid fields."""


def encode_clip(clip: dict[str, Any]) -> bytes:
  """Validates `clip` and serialises it (with the schema version) to bytes. `kind` defaults
  to "video"; absent optional fields may be left out or None."""
  clip = _validated(dict(clip))
  payload = {k: v for k, v in clip.items() if v is not None}
  return serialization.msgpack_serialize(dict(payload, schema_version=SCHEMA_VERSION))


def decode_clip(data: bytes) -> dict[str, Any]:
  """Parses and validates a record written by `encode_clip`; raises RecordError otherwise.
  The result has every field of the schema (None where absent)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise RecordError(f"record must be bytes, got {type(data).__name__}")
  try:
    payload = serialization.msgpack_restore(bytes(data))
  except Exception as e:  # msgpack raises several unrelated types on corrupt input.
    raise RecordError(f"corrupt record ({type(e).__name__}: {e})") from e
  if not isinstance(payload, dict):
    raise RecordError(f"corrupt record: top level is {type(payload).__name__}, not a dict")
  version = payload.pop("schema_version", None)
  if version not in READABLE_VERSIONS:
    raise RecordError(
        f"record schema_version is {version!r}; this reader understands {READABLE_VERSIONS}")
  if version == 1:
    for field in ("video", "audio", "fps", "sample_rate"):
      if field not in payload:
        raise RecordError(f"record is missing fields ['{field}']")
  return _validated(payload)


def _validated(clip: dict[str, Any]) -> dict[str, Any]:
  """Checks every field and returns the clip with canonical Python/numpy types."""
  unknown = sorted(set(clip) - set(_FIELDS))
  if unknown:
    raise RecordError(f"record has unknown fields {unknown} (bump SCHEMA_VERSION to add fields)")
  kind = clip.get("kind") or "video"
  if kind not in KINDS:
    raise RecordError(f"kind must be one of {KINDS}, got {kind!r}")
  if "caption" not in clip:
    raise RecordError("record is missing fields ['caption']")
  caption = clip["caption"]
  if not isinstance(caption, str):
    raise RecordError(f"caption must be a str, got {type(caption).__name__}")
  source = clip.get("source")
  if source is not None and not isinstance(source, str):
    raise RecordError(f"source must be a str, got {type(source).__name__}")

  video = clip.get("video")
  if kind == "audio":
    if video is not None:
      raise RecordError("an audio record has no video")
  else:
    if video is None:
      raise RecordError(f"record is missing fields ['video'] (kind {kind!r})")
    video = check_array(video, "video", np.uint8, ndim=4)
    if video.shape[-1] != 3:
      raise RecordError(f"video must have 3 colour channels, got shape {video.shape}")
    if min(video.shape) == 0:
      raise RecordError(f"video is empty: shape {video.shape}")
    if kind == "image" and video.shape[0] != 1:
      raise RecordError(f"an image record has one frame, got {video.shape[0]}")

  audio = clip.get("audio")
  if kind == "image" and audio is not None:
    raise RecordError("an image record has no audio")
  if kind == "audio" and audio is None:
    raise RecordError("record is missing fields ['audio'] (kind 'audio')")
  sample_rate = None
  if audio is not None:
    audio = check_array(audio, "audio", np.float32, ndim=2)
    if min(audio.shape) == 0:
      raise RecordError(f"audio is empty: shape {audio.shape}")
    if not np.all(np.isfinite(audio)) or np.max(np.abs(audio)) > 1.0:
      raise RecordError("audio must be finite and within [-1, 1]")
    sample_rate = _positive(clip.get("sample_rate"), "sample_rate", int)

  fps = None
  if kind == "video" or clip.get("fps") is not None:
    fps = _positive(clip.get("fps"), "fps", float)

  if kind == "video" and audio is not None:
    num_frames = video.shape[0]
    expected = num_frames / fps * sample_rate
    samples_per_frame = sample_rate / fps
    if abs(audio.shape[0] - expected) > samples_per_frame:
      raise RecordError(
          f"audio has {audio.shape[0]} samples but {num_frames} frames at {fps} fps and "
          f"{sample_rate} Hz need {expected:.0f} (+- {samples_per_frame:.0f})")

  out = dict(kind=kind, video=video, audio=audio, fps=fps, sample_rate=sample_rate,
             caption=caption, source=source, bounces=None, shots=None)
  out.update(_given(clip, video, audio))
  if clip.get("bounces") is not None:
    if kind != "video":
      raise RecordError("bounces belong to video records")
    bounces = check_array(clip["bounces"], "bounces", np.float32, ndim=1)
    duration = video.shape[0] / fps
    if bounces.size and (not np.all(np.isfinite(bounces))
                         or bounces.min() < 0 or bounces.max() > duration):
      raise RecordError(f"bounces must be times within [0, {duration}] s")
    out["bounces"] = bounces
  if clip.get("shots") is not None:
    if kind != "video":
      raise RecordError("shots belong to video records")
    try:
      out["shots"] = shots_lib.check_shots(clip["shots"], video.shape[0] / fps)
    except shots_lib.ShotError as e:
      raise RecordError(str(e)) from None
  return out


def _given(clip: dict[str, Any], video, audio) -> dict[str, Any]:
  """The given-condition fields, checked against the clip's frames, pixels and samples."""
  out = dict.fromkeys(GIVEN_FIELDS)
  present = [k for k in GIVEN_FIELDS if clip.get(k) is not None]
  pictures = sorted(set(present) - {"audio_mask", "instruction"})
  if video is None and pictures:
    raise RecordError(f"an audio record has no {pictures}")
  if clip.get("mask") is not None:
    mask = check_array(clip["mask"], "mask", np.uint8, ndim=3)
    if mask.shape[0] not in (1, video.shape[0]) or mask.shape[1:] != video.shape[1:3]:
      raise RecordError(f"mask has shape {mask.shape}; the video {video.shape[:3]} needs "
                        f"({video.shape[0]} or 1, {video.shape[1]}, {video.shape[2]})")
    out["mask"] = _binary(mask, "mask")
  if clip.get("audio_mask") is not None:
    if audio is None:
      raise RecordError("audio_mask needs audio")
    mask = check_array(clip["audio_mask"], "audio_mask", np.uint8, ndim=1)
    if mask.shape[0] != audio.shape[0]:
      raise RecordError(f"audio_mask has {mask.shape[0]} samples, audio {audio.shape[0]}")
    out["audio_mask"] = _binary(mask, "audio_mask")
  if clip.get("source_video") is not None:
    src = check_array(clip["source_video"], "source_video", np.uint8, ndim=4)
    if src.shape != video.shape:
      raise RecordError(f"source_video has shape {src.shape}, video {video.shape}")
    out["source_video"] = src
  if clip.get("references") is not None:
    refs = check_array(clip["references"], "references", np.uint8, ndim=4)
    if refs.shape[0] == 0 or refs.shape[1:] != video.shape[1:]:
      raise RecordError(f"references have shape {refs.shape}; stills at the video's size "
                        f"(N >= 1, {video.shape[1]}, {video.shape[2]}, 3)")
    out["references"] = refs
  if clip.get("instruction") is not None:
    if not isinstance(clip["instruction"], str):
      raise RecordError(f"instruction must be a str, got {type(clip['instruction']).__name__}")
    out["instruction"] = clip["instruction"]
  return out


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
  if mask.size and mask.max() > 1:
    raise RecordError(f"{name} must hold 0 (generate) and 1 (keep) only, found {mask.max()}")
  return mask


def _positive(value: Any, name: str, kind: type) -> float | int:
  if value is None:
    raise RecordError(f"record is missing fields ['{name}']")
  ok = (int, np.integer) if kind is int else (int, float, np.floating, np.integer)
  if isinstance(value, bool) or not isinstance(value, ok):
    raise RecordError(f"{name} must be {'an int' if kind is int else 'a number'}, got "
                      f"{type(value).__name__}")
  value = kind(value)
  if not (math.isfinite(value) and value > 0):
    raise RecordError(f"{name} must be positive, got {value}")
  return value


def check_array(value: Any, name: str, dtype: type, *, ndim: int,
                error: type[ValueError] = RecordError) -> np.ndarray:
  """`value` as a numpy array of `dtype` and `ndim` dims, else `error` naming the field."""
  if not isinstance(value, np.ndarray):
    raise error(f"{name} must be a numpy array, got {type(value).__name__}")
  if value.dtype != dtype:
    raise error(f"{name} must be {np.dtype(dtype).name}, got {value.dtype}")
  if value.ndim != ndim:
    raise error(f"{name} must have {ndim} dims, got shape {value.shape}")
  return value
