"""The on-disk latent record: a clip already through the run's frozen encoders.

Training on latents skips the autoencoders (and a frozen text encoder) in the train step;
`data_pipelines/encode_latents.py` writes these records. One msgpack blob per ArrayRecord
entry (LATENT_SCHEMA_VERSION 1):
  kind            str     "video", "image" or "audio", as in the clip record it came from
  video_latent    (T, h, w, C) float32 or bfloat16; None for audio
  audio_latent    (Ta, Ca) float32 or bfloat16; None for an image or a silent video
  text_ids        int32 (L,) the tokenizer's ids: when the text encoder trains with the model
  text_embedding  (L, D) float32 or bfloat16: when the text encoder is frozen (instead of ids)
  text_mask       bool (L,) the tokenizer's mask, or the frozen encoder's output mask
  caption         str     the clip's caption (kept, so a run can re-tokenise)
  source          str     optional: where the clip came from
  encoders        dict    {"video_ae": {...}, "audio_ae": {...}, "text": {...}}: the kind and
                          settings of each encoder, so a run refuses latents of other encoders
Shots (schema 3, optional: model.shot_attention; tasks/shots.py):
  text_shot       int32 (L,) the shot of each text token (0: global)
  shot_spans      float32 (S, 2) each shot's (start, end) seconds, (-1, -1) for none
Given conditions (schema 2, optional; from the clip record's, tasks/given.py):
  given_keep        uint8 (T, h, w): the mask on the latent grid (1 = keep), by the rule
  given_audio_keep  uint8 (Ta,): the audio mask on the audio latent grid
  source_latent     like video_latent: the edit's source clip
  reference_latents (N, h, w, C): the reference stills, each encoded as a still
  instruction       str
  edit_text_ids / edit_text_embedding, edit_text_mask: the edit prompt (index.json's
                    edit_prompt: the instruction alone or appended to the caption), as the
                    caption's text fields

All float arrays of a record share one dtype. bfloat16 travels as its uint16 bit pattern (with
`dtype` saying so) because msgpack readers without ml_dtypes cannot rebuild bfloat16 arrays;
decoding returns ml_dtypes bfloat16 arrays, which jax takes as they are.
"""

import dataclasses
import json
import os
from typing import Any

from absl import logging
from flax import serialization
import ml_dtypes
import numpy as np

from skyreels_jax.data import records
from skyreels_jax.data import shots
from skyreels_jax.data.buckets import Bucket
from skyreels_jax.data.given import GivenFields

LATENT_SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
KINDS = ("video", "image", "audio")
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
ENCODER_KEYS = ("video_ae", "audio_ae", "text")
# Chunking does not change the numbers; an autoencoder's dtype changes them within the
# tolerance its parity tests state (bf16 and fp32 latents train alike), so latents made at
# either precision serve a run at the other.
NUMERICALLY_NEUTRAL = ("encode_chunk", "decode_chunk", "dtype")
# Encoder settings newer than some latent data sets, and the value older sets were made with.
DEFAULTS = {"video_ae": dict(tile_height=0, tile_width=0, tile_stride_height=0,
                             tile_stride_width=0),
            "text": dict(path="", tokenizer_path="", output_layer=-1, shot_captions=False,
                         max_shots=0)}

_FLOAT_FIELDS = ("video_latent", "audio_latent", "text_embedding", "source_latent",
                 "reference_latents", "edit_text_embedding")
GIVEN_FIELDS = ("given_keep", "given_audio_keep", "source_latent", "reference_latents",
                "instruction", "edit_text_ids", "edit_text_embedding", "edit_text_mask")
SHOT_FIELDS = shots.TOKEN_FIELDS
_FIELDS = ("kind", "video_latent", "audio_latent", "text_ids", "text_mask", "text_embedding",
           "caption", "source", "encoders") + GIVEN_FIELDS + SHOT_FIELDS


class LatentRecordError(ValueError):
  """A latent record that cannot be used: corrupt bytes, wrong version, or invalid fields."""


def encoder_identity(config, *, text_frozen: bool) -> dict[str, Any]:
  """The encoders a config trains with, as plain JSON values: the `video_ae`, `audio_ae` and
  `text` config sections (audio with the channel count it is built for, text with whether
  it is frozen). Equal identities mean interchangeable latents. Settings that do not change
  the numbers (the chunking of the causal scan) or only within a stated tolerance (an
  autoencoder's dtype) are left out; the checkpoint path stays in
  (another file may hold other weights)."""
  drop = lambda d: {k: v for k, v in d.items() if k not in NUMERICALLY_NEUTRAL}
  ident = {
      "video_ae": drop(config.video_ae.to_dict()),
      "audio_ae": dict(drop(config.audio_ae.to_dict()),
                       channels=int(config.data.audio_channels)),
      # the text embedded (shot tags) and the shot fields beside it (model.shot_attention)
      "text": dict(config.text.to_dict(), frozen=bool(text_frozen),
                   shot_captions=bool(config.data.shot_captions),
                   max_shots=int(config.data.max_shots_per_clip)
                   if config.model.shot_attention else 0),
  }
  return _plain(ident)


def check_encoders(found: dict[str, Any], expected: dict[str, Any]) -> None:
  """Raises LatentRecordError naming the first setting where latents made by `found` differ
  from what the run's encoders (`expected`) would make."""
  found, expected = _plain(found), _plain(expected)
  for key in ENCODER_KEYS:
    # Fields added since some latents were written default to the value that was implied.
    a = {**DEFAULTS.get(key, {}), **found.get(key, {})}
    b = {**DEFAULTS.get(key, {}), **expected.get(key, {})}
    for field in sorted(set(a) | set(b)):
      if a.get(field) != b.get(field):
        raise LatentRecordError(
            f"latents were made with {key}.{field}={a.get(field)!r}, this run uses "
            f"{b.get(field)!r}: re-encode them (python -m data_pipelines.encode_latents)")


def encode_latent_record(record: dict[str, Any]) -> bytes:
  """Validates `record` and serialises it (with the schema version) to bytes. `kind`
  defaults to "video"; absent optional fields may be left out or None."""
  record = _validated(dict(record))
  payload = {k: v for k, v in record.items() if v is not None}
  dtypes = {payload[k].dtype for k in _FLOAT_FIELDS if k in payload}
  dtype = "bfloat16" if DTYPES["bfloat16"] in dtypes else "float32"
  for key in _FLOAT_FIELDS:
    if key in payload and dtype == "bfloat16":
      payload[key] = payload[key].view(np.uint16)
  return serialization.msgpack_serialize(
      dict(payload, dtype=dtype, latent_schema_version=LATENT_SCHEMA_VERSION))


def decode_latent_record(data: bytes) -> dict[str, Any]:
  """Parses and validates a record written by `encode_latent_record`; raises
  LatentRecordError otherwise. The result has every field (None where absent)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise LatentRecordError(f"latent record must be bytes, got {type(data).__name__}")
  try:
    payload = serialization.msgpack_restore(bytes(data))
  except Exception as e:  # msgpack raises several unrelated types on corrupt input.
    raise LatentRecordError(f"corrupt latent record ({type(e).__name__}: {e})") from e
  if not isinstance(payload, dict):
    raise LatentRecordError(
        f"corrupt latent record: top level is {type(payload).__name__}, not a dict")
  version = payload.pop("latent_schema_version", None)
  if version not in READABLE_VERSIONS:
    raise LatentRecordError(f"latent_schema_version is {version!r}; this reader understands "
                            f"{READABLE_VERSIONS} (is this a clip record?)")
  dtype = payload.pop("dtype", None)
  if dtype not in DTYPES:
    raise LatentRecordError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  for key in _FLOAT_FIELDS:
    value = payload.get(key)
    if dtype == "bfloat16" and value is not None:
      if not isinstance(value, np.ndarray) or value.dtype != np.uint16:
        raise LatentRecordError(f"{key} of a bfloat16 record must be stored as uint16")
      payload[key] = value.view(ml_dtypes.bfloat16)
  out = _validated(payload)
  found = {out[k].dtype for k in _FLOAT_FIELDS if out[k] is not None}
  if found and found != {DTYPES[dtype]}:
    raise LatentRecordError(f"record says dtype {dtype} but holds {sorted(map(str, found))}")
  return out


def _validated(record: dict[str, Any]) -> dict[str, Any]:
  """Checks every field and returns the record with canonical Python/numpy types."""
  unknown = sorted(set(record) - set(_FIELDS))
  if unknown:
    raise LatentRecordError(
        f"latent record has unknown fields {unknown} (bump LATENT_SCHEMA_VERSION to add)")
  kind = record.get("kind") or "video"
  if kind not in KINDS:
    raise LatentRecordError(f"kind must be one of {KINDS}, got {kind!r}")
  caption = record.get("caption")
  if not isinstance(caption, str):
    raise LatentRecordError(f"caption must be a str, got {type(caption).__name__}")
  source = record.get("source")
  if source is not None and not isinstance(source, str):
    raise LatentRecordError(f"source must be a str, got {type(source).__name__}")

  video = _latent(record.get("video_latent"), "video_latent", ndim=4)
  audio = _latent(record.get("audio_latent"), "audio_latent", ndim=2)
  if (video is None) != (kind == "audio"):
    raise LatentRecordError(f"kind {kind!r}: video_latent must be "
                            f"{'None' if kind == 'audio' else 'present'}")
  if kind == "audio" and audio is None:
    raise LatentRecordError("kind 'audio': audio_latent must be present")
  if kind == "image" and audio is not None:
    raise LatentRecordError("kind 'image': audio_latent must be None")
  float_dtypes = {x.dtype for x in (video, audio) if x is not None}

  ids = record.get("text_ids")
  embedding = _latent(record.get("text_embedding"), "text_embedding", ndim=2)
  if (ids is None) == (embedding is None):
    raise LatentRecordError("a latent record holds exactly one of text_ids (trained text "
                            "encoder) and text_embedding (frozen text encoder)")
  mask = _array(record.get("text_mask"), "text_mask", np.bool_, ndim=1)
  if ids is not None:
    ids = _array(ids, "text_ids", np.int32, ndim=1)
    if ids.shape != mask.shape:
      raise LatentRecordError(f"text_ids {ids.shape} and text_mask {mask.shape} differ")
  else:
    float_dtypes.add(embedding.dtype)
    if embedding.shape[0] != mask.shape[0]:
      raise LatentRecordError(
          f"text_embedding has {embedding.shape[0]} tokens, text_mask {mask.shape[0]}")
  if len(float_dtypes) > 1:
    raise LatentRecordError(f"latents and embeddings must share one dtype, got "
                            f"{sorted(map(str, float_dtypes))}")

  encoders = record.get("encoders")
  if not isinstance(encoders, dict) or sorted(encoders) != sorted(ENCODER_KEYS):
    raise LatentRecordError(f"encoders must be a dict with keys {ENCODER_KEYS}, got "
                            f"{sorted(encoders) if isinstance(encoders, dict) else encoders!r}")
  for key in ENCODER_KEYS:
    if not isinstance(encoders[key], dict) or not isinstance(encoders[key].get("kind"), str):
      raise LatentRecordError(f"encoders[{key!r}] must be a dict with a str 'kind'")
  if bool(encoders["text"].get("frozen")) != (embedding is not None):
    raise LatentRecordError("encoders['text']['frozen'] must be true exactly when the record "
                            "holds a text_embedding")
  out = dict(kind=kind, video_latent=video, audio_latent=audio, text_ids=ids, text_mask=mask,
             text_embedding=embedding, caption=caption, source=source,
             encoders=_plain(encoders))
  out.update(_given(record, video, audio, ids is not None, mask.shape, float_dtypes))
  out.update(dict.fromkeys(SHOT_FIELDS))
  if (record.get("text_shot") is None) != (record.get("shot_spans") is None):
    raise LatentRecordError("text_shot and shot_spans go together")
  if record.get("text_shot") is not None:
    out["text_shot"] = _array(record["text_shot"], "text_shot", np.int32, ndim=1)
    out["shot_spans"] = _array(record["shot_spans"], "shot_spans", np.float32, ndim=2)
    if out["text_shot"].shape != mask.shape or out["shot_spans"].shape[-1] != 2:
      raise LatentRecordError(f"text_shot {out['text_shot'].shape} must match text_mask "
                              f"{mask.shape}; shot_spans (S, 2), got "
                              f"{out['shot_spans'].shape}")
  return out


def _given(record: dict[str, Any], video, audio, ids: bool, text_shape,
           float_dtypes: set) -> dict[str, Any]:
  """The given-condition fields, checked against the latents and the caption's text."""
  out = dict.fromkeys(GIVEN_FIELDS)
  grid = None if video is None else video.shape[:3]
  if record.get("given_keep") is not None:
    keep = _array(record["given_keep"], "given_keep", np.uint8, ndim=3)
    if grid is None or keep.shape != grid or keep.max(initial=0) > 1:
      raise LatentRecordError(f"given_keep must be 0 / 1 on the video latent grid {grid}, "
                              f"got shape {keep.shape}")
    out["given_keep"] = keep
  if record.get("given_audio_keep") is not None:
    keep = _array(record["given_audio_keep"], "given_audio_keep", np.uint8, ndim=1)
    if audio is None or keep.shape != audio.shape[:1] or keep.max(initial=0) > 1:
      raise LatentRecordError(f"given_audio_keep must be 0 / 1 on the audio latent grid, got "
                              f"shape {keep.shape}")
    out["given_audio_keep"] = keep
  for key, ndim in (("source_latent", 4), ("reference_latents", 4)):
    z = _latent(record.get(key), key, ndim=ndim)
    if z is None:
      continue
    want = video.shape if key == "source_latent" else video.shape[1:] if video is not None else None
    got = z.shape if key == "source_latent" else z.shape[1:]
    if want is None or got != want:
      raise LatentRecordError(f"{key} has shape {z.shape}; the video latent is "
                              f"{None if video is None else video.shape}")
    float_dtypes.add(z.dtype)
    out[key] = z
  if record.get("instruction") is not None:
    if not isinstance(record["instruction"], str):
      raise LatentRecordError("instruction must be a str")
    out["instruction"] = record["instruction"]
  if record.get("edit_text_mask") is not None:
    out["edit_text_mask"] = _array(record["edit_text_mask"], "edit_text_mask", np.bool_, ndim=1)
    if ids:
      out["edit_text_ids"] = _array(record.get("edit_text_ids"), "edit_text_ids", np.int32,
                                    ndim=1)
    else:
      out["edit_text_embedding"] = _latent(record.get("edit_text_embedding"),
                                           "edit_text_embedding", ndim=2)
      if out["edit_text_embedding"] is None:
        raise LatentRecordError("edit_text_mask without edit_text_embedding")
      float_dtypes.add(out["edit_text_embedding"].dtype)
    if out["edit_text_mask"].shape != text_shape:
      raise LatentRecordError(f"edit_text_mask {out['edit_text_mask'].shape} and text_mask "
                              f"{text_shape} differ")
  if len(float_dtypes) > 1:
    raise LatentRecordError(f"latents and embeddings must share one dtype, got "
                            f"{sorted(map(str, float_dtypes))}")
  return out


def _latent(value: Any, name: str, *, ndim: int) -> np.ndarray | None:
  if value is None:
    return None
  if not isinstance(value, np.ndarray):
    raise LatentRecordError(f"{name} must be a numpy array, got {type(value).__name__}")
  if value.dtype not in DTYPES.values():
    raise LatentRecordError(f"{name} must be float32 or bfloat16, got {value.dtype}")
  if value.ndim != ndim or min(value.shape) == 0:
    raise LatentRecordError(f"{name} must have {ndim} non-empty dims, got shape {value.shape}")
  if not np.all(np.isfinite(value.astype(np.float32))):
    raise LatentRecordError(f"{name} holds NaN or infinite values")
  return value


def _array(value: Any, name: str, dtype: type, *, ndim: int) -> np.ndarray:
  return records.check_array(value, name, dtype, ndim=ndim, error=LatentRecordError)


def _plain(tree: Any) -> Any:
  """JSON values only (tuples become lists): msgpack and index.json store them alike, so
  identities compare equal after either round trip."""
  try:
    return json.loads(json.dumps(tree))
  except (TypeError, ValueError) as e:
    raise LatentRecordError(f"encoders must hold JSON values only ({e})") from e


NULL_TEXT_FILE = "null_text.npz"


def write_null_text(out_dir: str, embedding, mask) -> None:
  """The frozen text encoder's embedding of the empty prompt, beside the latent shards:
  caption dropout (the CFG null condition) on precomputed embeddings swaps it in."""
  with open(os.path.join(out_dir, NULL_TEXT_FILE), "wb") as f:
    np.savez(f, embedding=np.asarray(embedding, np.float32), mask=np.asarray(mask, bool))


def read_null_text(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(embedding (L, D) float32, mask (L,) bool) written by `write_null_text`."""
  file = os.path.join(path, NULL_TEXT_FILE)
  if not os.path.exists(file):
    raise ValueError(f"{file} does not exist: latents with frozen text embeddings carry the "
                     "empty prompt's embedding; re-run data_pipelines.encode_latents")
  with np.load(file) as z:
    return z["embedding"], z["mask"].astype(bool)


# ------------------------------------------------------------------ reading for training

def read_index(path: str, encoders: dict | None, text_frozen: bool) -> dict:
  """index.json of a latent data set (data_pipelines/encode_latents.py), checked: complete,
  made by the run's encoders, and holding what the run's text side reads (embeddings of a
  frozen encoder, or token ids for one that trains with the model)."""
  index_path = os.path.join(path, "index.json")
  if not os.path.exists(index_path):
    raise ValueError(f"data.format=latents but {index_path} does not exist: write latents "
                     "with python -m data_pipelines.encode_latents")
  with open(index_path) as f:
    index = json.load(f)
  if not index.get("complete"):
    raise ValueError(f"{path}: encode_latents did not finish (index.json complete=false); "
                     "run it again to finish")
  if encoders is not None:
    check_encoders(index["encoders"], encoders)
  embedded = bool(index.get("text", {}).get("embedding_width"))
  if embedded and not text_frozen:
    raise ValueError(f"{path} holds frozen text-encoder embeddings; this run's text encoder "
                     "trains with the model and reads token ids")
  if text_frozen and not embedded:
    raise ValueError(f"{path} holds token ids; this run's text encoder is frozen and reads "
                     "its embeddings: re-encode with the run's config")
  return index


@dataclasses.dataclass(frozen=True)
class LatentPreprocessor:
  """Latent record bytes -> example (video_latent / audio_latent float32, has_video,
  has_audio, text_ids, text_mask), or a BadRecord. Stand-ins for a missing stream are zeros
  (the train step drops that stream: only the shape matters)."""
  kind: str
  video_shape: tuple[int, ...] | None     # the bucket's video latent (the stand-in's shape
  audio_shape: tuple[int, ...] | None     # for sound-only buckets) and audio latent
  given: GivenFields | None = None

  @classmethod
  def for_bucket(cls, bucket: Bucket, index: dict, blank_size: tuple[int, int],
                 video_latent_shape, given=None) -> "LatentPreprocessor":
    entry = next((b for b in index["buckets"].values() if b["name"] == bucket.name), {})
    video, audio = entry.get("video_latent_shape"), entry.get("audio_latent_shape")
    if bucket.kind == "audio":
      if video_latent_shape is None:
        raise ValueError("sound-only latent buckets need video_latent_shape")
      video = video_latent_shape(bucket.num_frames, *blank_size)
    return cls(kind=bucket.kind, video_shape=None if video is None else tuple(video),
               audio_shape=None if audio is None else tuple(audio), given=given)

  def __call__(self, data: bytes) -> dict[str, np.ndarray] | records.BadRecord:
    try:
      rec = decode_latent_record(data)
      if rec["kind"] != self.kind:
        raise LatentRecordError(f"a {rec['kind']} record in a {self.kind} bucket")
      return self.preprocess(rec)
    except LatentRecordError as e:
      logging.log_every_n_seconds(logging.WARNING, "Skipping bad latent record: %s", 10, e)
      return records.BadRecord(str(e))

  def preprocess(self, rec: dict[str, Any]) -> dict[str, np.ndarray]:
    f32 = lambda x: np.asarray(x, np.float32)
    out = {"text_mask": rec["text_mask"]}
    out.update({k: rec[k] for k in SHOT_FIELDS if rec.get(k) is not None})
    if rec.get("text_embedding") is not None:
      out["text_embedding"] = f32(rec["text_embedding"])
    else:
      out["text_ids"] = rec["text_ids"]
    if self.kind == "audio":
      out.update(video_latent=np.zeros(self.video_shape, np.float32),
                 audio_latent=f32(rec["audio_latent"]), has_video=np.bool_(False),
                 has_audio=np.bool_(True))
    elif self.kind == "image":
      out.update(video_latent=f32(rec["video_latent"]), has_video=np.bool_(True))
    else:
      has_audio = rec["audio_latent"] is not None
      out.update(video_latent=f32(rec["video_latent"]), has_video=np.bool_(True),
                 has_audio=np.bool_(has_audio),
                 audio_latent=f32(rec["audio_latent"]) if has_audio
                 else np.zeros(self.audio_shape, np.float32))
    if self.video_shape and out["video_latent"].shape != self.video_shape:
      raise LatentRecordError(f"video latent {out['video_latent'].shape} in a bucket "
                                      f"of {self.video_shape}")
    if self.given is not None:
      out.update(self.given.latent_fields(
          rec, out, "text_embedding" if "text_embedding" in out else "text_ids"))
    return out
