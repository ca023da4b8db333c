"""Captions (NAME.txt / NAME.json), shot captions (NAME.shots.json) and given-condition
sidecars of build_records' inputs (data/records.py schema 4): masks, references, edit
sources, instructions and audio masks, found beside a media file or named in a manifest,
and read through exactly the input's geometry.

Beside `NAME.ext` in a folder:
  NAME.mask.mp4 / NAME.mask.png / NAME.mask/ (PNG frames, one per frame of the video, in
      name order): white = regenerate (the sampler's --mask polarity), stored as the
      record's 1 = keep. A PNG mask holds on every frame.
  NAME.ref.png, NAME.ref2.png, NAME.ref_side.jpg, ... (png|jpg|jpeg|webp|mp4): reference
      stills, in name order (a video reference gives its middle frame).
  NAME.shots.json: the video's shots, `[{"start": s, "end": e, "text": ..., "sfx": ...}]`
      in seconds from its first frame (data/shots.py), moved onto each clip's timeline.
Manifest columns (paths relative to the manifest): `shots` (that list in a JSONL row, or
the path of such a file), `target` (the edited clip; an alias of
`path`), `source_video` (the clip before the edit), `mask`, `references` (a JSON list, or
paths joined by `;` in a CSV), `instruction`, `audio_mask` ("START:END;..." seconds of the
input's own sound to regenerate).

A mask or source goes through the video's geometry: the same frames (the frame-rate
resampling picks the same source frame indices), the same upright turn, cover-resize and
centre crop, the same clip cuts; a mask is binarised after resizing (grey > 127 =
regenerate, data/media.MASK_THRESHOLD). It must have the video's frame size and (unless
it is one PNG) frame count, else the input is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image

from skyreels_jax.data import shots as shots_lib
from skyreels_jax.tasks import given
from skyreels_jax.data.media import STILL_EXTS, aligned_frames, cover, mask_keep, video_images

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MASK_EXTS = STILL_EXTS + VIDEO_EXTS     # NAME.mask.mp4 / .png, and the like
REF_EXTS = STILL_EXTS + VIDEO_EXTS
# NAME.mask.EXT, NAME.mask/ and NAME.ref.EXT, NAME.ref2.EXT, NAME.ref_side.EXT (not
# NAME.reflection.EXT: a picture that merely starts with "ref" stays an input).
_SIDECAR = re.compile(
    r"^(?P<stem>.+)\.(?P<what>mask|shots|ref(?:\d+|[-_][^./]*)?)(?P<ext>\.[^.]+)?$")
PATH_FIELDS = ("mask", "source_video", "references")
CAPTION_FIELDS = ("text", "sfx", "dialogue", "singing", "bgm")
_TAG = re.compile(r"<(%s)>" % "|".join(CAPTION_FIELDS))


def caption_from_fields(fields: dict[str, Any]) -> str:
  """Structured caption from caption fields in SPEC order; empty fields are left out. A
  lone `caption` string stands for the whole caption."""
  parts = [f"<{k}>{str(fields[k]).strip()}</{k}>" for k in CAPTION_FIELDS
           if fields.get(k) is not None and str(fields[k]).strip()]
  if parts:
    return "".join(parts)
  return caption_from_text(str(fields.get("caption") or ""))


def caption_from_text(text: str) -> str:
  """Plain text becomes `<text>..</text>`; text that already has tags is kept as written."""
  text = text.strip()
  if not text or _TAG.search(text):
    return text
  return f"<text>{text}</text>"


def sidecar_caption(media_path: str) -> str:
  """The caption of `NAME.txt` or `NAME.json` next to the media file ("" when neither)."""
  stem = os.path.splitext(media_path)[0]
  if os.path.isfile(stem + ".json"):
    with open(stem + ".json", encoding="utf-8") as f:
      fields = json.load(f)
    if not isinstance(fields, dict):
      raise ValueError(f"{stem}.json: a caption sidecar must hold a JSON object")
    return caption_from_fields(fields)
  if os.path.isfile(stem + ".txt"):
    with open(stem + ".txt", encoding="utf-8") as f:
      return caption_from_text(f.read())
  return ""


def sidecar_of(name: str, is_dir: bool = False) -> tuple[str, str] | None:
  """(owner stem, "mask" | "ref" | "shots") when `name` is a given-condition or shots
  sidecar, else None."""
  m = _SIDECAR.match(name)
  if not m:
    return None
  ext = (m.group("ext") or "").lower()
  if m.group("what") == "shots":
    return (m.group("stem"), "shots") if not is_dir and ext == ".json" else None
  if m.group("what") == "mask":
    if (is_dir and not ext) or (not is_dir and ext in MASK_EXTS):
      return m.group("stem"), "mask"
    return None
  if not is_dir and ext in REF_EXTS:
    return m.group("stem"), "ref"
  return None


def attach(row: dict[str, Any], root: str, found: dict[str, list[tuple[str, str]]]) -> None:
  """Adds the sidecars `found` for the row's stem ({stem: [(kind, name)]}) to its fields."""
  stem = os.path.splitext(os.path.basename(row["path"]))[0]
  for kind, name in sorted(found.get(stem, []), key=lambda x: x[1]):
    path = os.path.join(root, name)
    if kind == "shots":
      row["shots"] = path
    elif kind == "mask":
      if row.get("mask"):
        row["error"] = f"two masks: {os.path.basename(row['mask'])} and {name}"
      row["mask"] = path
    else:
      row.setdefault("references", []).append(path)


def manifest_fields(entry: dict[str, Any], base: str) -> dict[str, Any]:
  """The given-condition fields of a manifest row (paths made absolute)."""
  out = {}
  for key in ("mask", "source_video"):
    if entry.get(key):
      out[key] = os.path.join(base, os.path.normpath(str(entry[key])))
  refs = entry.get("references")
  if refs:
    if isinstance(refs, str):
      refs = [r for r in refs.split(";") if r.strip()]
    out["references"] = [os.path.join(base, os.path.normpath(str(r).strip())) for r in refs]
  for key in ("instruction", "audio_mask"):
    if entry.get(key) is not None and str(entry[key]).strip():
      out[key] = str(entry[key]).strip()
  shots = entry.get("shots")
  if isinstance(shots, str) and shots.strip():
    out["shots"] = os.path.join(base, os.path.normpath(shots.strip()))
  elif shots:
    out["shots"] = shots     # the list itself (checked when the input is read)
  return out


def read_shots(row: dict[str, Any], duration: float) -> list[dict[str, Any]] | None:
  """The row's shots (NAME.shots.json, or a manifest's list or file), checked against the
  video's `duration`; None when it has none; ValueError naming the file otherwise."""
  shots = row.get("shots")
  if not shots:
    return None
  if isinstance(shots, str):
    if not os.path.isfile(shots):
      raise ValueError(f"shots file {shots} not found")
    return shots_lib.check_shots(shots_lib.read_file(shots), duration, what=shots)
  return shots_lib.check_shots(shots, duration, what="the manifest's shots")


def stamp(row: dict[str, Any]) -> str:
  """What of the sidecars a restart compares (paths, sizes, mtimes, strings)."""
  parts = []
  paths = [row[k] for k in ("mask", "source_video") if row.get(k)] + row.get("references", [])
  for path in paths:
    try:
      st = os.stat(path)
      parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
      if os.path.isdir(path):
        parts += sorted(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}"
                        for e in os.scandir(path))
    except OSError:
      parts.append(f"{path}:missing")
  if isinstance(row.get("shots"), str):
    path = row["shots"]
    try:
      st = os.stat(path)
      parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
      parts.append(f"{path}:missing")
  elif row.get("shots"):
    parts.append(json.dumps(row["shots"], sort_keys=True))
  parts += [f"{k}={row[k]}" for k in ("instruction", "audio_mask") if row.get(k)]
  return "\0".join(parts)


def has_given(row: dict[str, Any]) -> bool:
  return any(row.get(k) for k in PATH_FIELDS + ("instruction", "audio_mask"))


def video_given(row: dict[str, Any], sampler, size: tuple[int, int]) -> dict[str, Any]:
  """The row's mask (n or 1, H, W) keep, source_video (n, H, W, 3) and references
  (N, H, W, 3) at the video's frames (its FrameSampler's picks) and `size`; ValueError with
  the reason."""
  return _given(row, sampler.picked, size, source_size=sampler.source_size,
                num_source=sampler.seen)


def image_given(row: dict[str, Any], image: "Image.Image", size) -> dict[str, Any]:
  """The given fields of an image input (one frame)."""
  return _given(row, [0], size, source_size=(image.height, image.width), num_source=1)


def _given(row: dict[str, Any], picked: list[int], size, **frames) -> dict[str, Any]:
  out = {}
  if row.get("mask"):
    out["mask"] = mask_keep(_named("mask", aligned_frames, row["mask"], picked, *size,
                                   mode="L", **frames))
  if row.get("source_video"):
    out["source_video"] = _named("source_video", aligned_frames, row["source_video"], picked,
                                 *size, **frames)
  out.update(_references(row, size))
  return out


def _named(field: str, fn, path: str, *args, **kwargs):
  if not os.path.exists(path):
    raise ValueError(f"{field} {os.path.basename(path)}: file not found")
  try:
    return fn(path, *args, **kwargs)
  except ValueError as e:
    raise ValueError(f"{field}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  (any decoder error: name the field)
    raise ValueError(f"{field} {os.path.basename(path)}: {type(e).__name__}: {e}") from None


def _references(row: dict[str, Any], size) -> dict[str, Any]:
  stills = []
  for path in row.get("references", []):
    if path.lower().endswith(STILL_EXTS):
      stills.append(_named("reference", lambda p: cover(Image.open(p).convert("RGB"), *size),
                           path))
    else:
      stills.append(_named("reference", _middle_frame, path, size))
  return {"references": np.stack(stills)} if stills else {}


def _middle_frame(path: str, size) -> np.ndarray:
  images = list(video_images(path))
  if not images:
    raise ValueError("no frames")
  return cover(images[len(images) // 2].convert("RGB"), *size)


def audio_spans(text: str) -> list[tuple[float, float]]:
  """"START:END;START:END" seconds -> spans; ValueError naming the column."""
  try:
    return [given.parse_span(part) for part in text.split(";")]
  except ValueError as e:
    raise ValueError(f"audio_mask {e}") from None


def audio_keep_samples(text: str, num_samples: int, sample_rate: int,
                       start: float) -> np.ndarray:
  """Keep mask (S,) uint8 of a decoded track starting at `start` seconds."""
  t = start + np.arange(num_samples) / sample_rate
  keep = np.ones((num_samples,), np.uint8)
  for s0, s1 in audio_spans(text):
    keep[(t >= s0) & (t < s1)] = 0
  return keep

