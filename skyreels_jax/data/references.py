"""In-context references for training, from OUTSIDE the target window (SPEC section 3).

A reference the model could copy from its own target teaches copying, not following. So a
reference comes from another clip of the same source video (records sharing the `source`
path of `path@start_seconds`, at a start at least one clip duration away), or, when the
source has no other clip, from the frames / samples of the record past the target window.
Pixels are augmented (one random crop of at least `data.ref_crop_min` of each side, resized
back, and a random horizontal flip), so even a static scene is not a pixel copy.

Per example the loader draws a reference kind from `data.refs` (none / image / video): image
references are 1..`data.ref_images` single frames (encoded as stills in the train step, as at
sampling: tasks/refiner.still_latents); a video reference is a clip of
`data.ref_video_frames` frames. Audio references (`data.audio_ref_rate`) are
`data.audio_ref_seconds` of the source's sound from the same place. Where no reference can be
had (a one-clip source with nothing past the window, a corrupt partner record: logged), the
example trains without one.

Fields added to every example of a video / image bucket (zeros where unused, so batches
stack), the valid ones right-aligned (the slots next to the target, as at sampling):
  ref_images   float32 (N, H, W, 3) in [-1, 1]   ref_image_count int32
  ref_video    float32 (Fr, H, W, 3)             has_ref_video bool
  ref_audio    float32 (Sa, C)                   has_ref_audio bool

Sources: `<shard>.sources.json` (a JSON list, one source per record, written next to each
shard by data_pipelines) or, when absent, the records' own `source` fields read once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Sequence

from absl import logging
import numpy as np
from PIL import Image
from array_record.python import array_record_module

from skyreels_jax.data import records
from skyreels_jax.core import ConfigError, check

KINDS = ("none", "image", "video")


def enabled(data_config) -> bool:
  mix = dict(data_config.refs)
  return (any(mix.get(k, 0.0) > 0 for k in ("image", "video"))
          or data_config.audio_ref_rate > 0)


def batch_fields(data_config, batch: int, height: int, width: int
                 ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{field: (shape, numpy dtype)} of the reference fields of a (batch, height, width)
  batch: what ReferenceSampler.empty() stacks to (tools/aot.py's abstract batch)."""
  sampler = ReferenceSampler.from_config(data_config, height=height, width=width,
                                         num_frames=1, num_samples=1)
  return {k: ((batch, *np.shape(v)), np.asarray(v).dtype)
          for k, v in sampler.empty().items()}


def sidecar_path(shard: str) -> str:
  return shard + ".sources.json"


def write_sidecar(shard: str, sources: Sequence[str | None]) -> None:
  """Writes the per-record sources of `shard` (atomically)."""
  with open(sidecar_path(shard) + ".tmp", "w", encoding="utf-8") as f:
    json.dump(list(sources), f)
  os.replace(sidecar_path(shard) + ".tmp", sidecar_path(shard))


def read_sources(shards: Sequence[str], source, decode=None) -> list[str | None]:
  """One source per record of the concatenated shards (ArrayRecordDataSource order), from
  the shards' sidecars, else from the records (`decode`: bytes -> a dict with "source",
  raising a ValueError on a bad record; default: clip records)."""
  decode = decode or records.decode_clip
  out: list[str | None] = []
  for shard in shards:
    path = sidecar_path(shard)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out += json.load(f)
      continue
    start = len(out)
    n = _records_in(shard)
    logging.info("references: no %s; reading the sources of %d records", path, n)
    for i in range(start, start + n):
      try:
        out.append(decode(source[i])["source"])
      except ValueError:    # RecordError, LatentRecordError: a bad record has no source
        out.append(None)
  return out


def _records_in(shard: str) -> int:
  reader = array_record_module.ArrayRecordReader(shard)
  try:
    return reader.num_records()
  finally:
    reader.close()


def parse_source(source: str | None) -> tuple[str | None, float]:
  """`path@start_seconds` -> (path, start); anything else -> (None, 0): no partners."""
  if not source or "@" not in source:
    return None, 0.0
  path, _, start = source.rpartition("@")
  try:
    return path, float(start)
  except ValueError:
    return None, 0.0


def partner_table(sources: Sequence[str | None], duration: float) -> list[np.ndarray]:
  """For each record, the indices of other records of its source video whose windows do
  not overlap its own (starts at least `duration` apart)."""
  parsed = [parse_source(s) for s in sources]
  by_path: dict[str, list[int]] = collections.defaultdict(list)
  for i, (path, _) in enumerate(parsed):
    if path is not None:
      by_path[path].append(i)
  table = []
  for i, (path, start) in enumerate(parsed):
    others = by_path.get(path, []) if path is not None else []
    table.append(np.asarray([j for j in others
                             if j != i and abs(parsed[j][1] - start) >= duration - 1e-6],
                            np.int64))
  return table


@dataclasses.dataclass(frozen=True)
class ReferenceSampler:
  """Draws one example's references (module docstring); picklable (grain workers)."""
  mix: tuple[float, float, float]       # P(none), P(image), P(video)
  num_images: int
  video_frames: int
  audio_rate: float
  audio_samples: int
  crop_min: float
  height: int
  width: int
  num_frames: int                       # the target window, frames
  num_samples: int                      # the target window, samples
  audio_channels: int

  @classmethod
  def from_config(cls, data_config, *, height, width, num_frames, num_samples):
    mix = dict(data_config.refs)
    p = np.asarray([float(mix.get(k, 0.0)) for k in KINDS])
    return cls(mix=tuple(p / p.sum()), num_images=int(data_config.ref_images),
               video_frames=int(data_config.ref_video_frames),
               audio_rate=float(data_config.audio_ref_rate),
               audio_samples=int(round(data_config.audio_ref_seconds
                                       * data_config.sample_rate)),
               crop_min=float(data_config.ref_crop_min), height=height, width=width,
               num_frames=num_frames, num_samples=num_samples,
               audio_channels=int(data_config.audio_channels))

  def empty(self) -> dict[str, np.ndarray]:
    h, w = self.height, self.width
    return {"ref_images": np.zeros((max(self.num_images, 1), h, w, 3), np.float32),
            "ref_image_count": np.int32(0),
            "ref_video": np.zeros((max(self.video_frames, 1), h, w, 3), np.float32),
            "has_ref_video": np.bool_(False),
            "ref_audio": np.zeros((max(self.audio_samples, 1), self.audio_channels),
                                  np.float32),
            "has_ref_audio": np.bool_(False)}

  def sample(self, rng: np.random.Generator, own: dict[str, Any],
             partner: dict[str, Any] | None, audio_of) -> dict[str, np.ndarray]:
    """own / partner: decoded records (partner None: none found); audio_of(clip) -> its
    waveform at the run's rate and channels, or None."""
    out = self.empty()
    kind = KINDS[int(rng.choice(3, p=self.mix))]
    with_audio = rng.random() < self.audio_rate
    # Frames / samples outside the target: the partner's, else the record's own tail.
    frames = None
    if partner is not None and partner.get("video") is not None:
      frames = partner["video"]
    elif own.get("video") is not None and len(own["video"]) > self.num_frames:
      frames = own["video"][self.num_frames:]
    if kind == "image" and frames is not None:
      n = int(rng.integers(1, self.num_images + 1))
      picks = rng.choice(len(frames), size=n, replace=len(frames) < n)
      images = self._augment(rng, frames[picks])
      out["ref_images"][self.num_images - n:] = images
      out["ref_image_count"] = np.int32(n)
    elif kind == "video" and frames is not None and len(frames) >= self.video_frames:
      start = int(rng.integers(0, len(frames) - self.video_frames + 1))
      out["ref_video"] = self._augment(rng, frames[start:start + self.video_frames])
      out["has_ref_video"] = np.bool_(True)
    if with_audio and self.audio_samples:
      wave = None
      if partner is not None:
        wave = audio_of(partner)
      if wave is None:
        full = audio_of(own)
        wave = None if full is None else full[self.num_samples:]
      if wave is not None and len(wave) >= self.audio_samples:
        start = int(rng.integers(0, len(wave) - self.audio_samples + 1))
        out["ref_audio"] = np.ascontiguousarray(wave[start:start + self.audio_samples])
        out["has_ref_audio"] = np.bool_(True)
    return out

  def _augment(self, rng: np.random.Generator, frames: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w, 3) -> float32 (n, H, W, 3) in [-1, 1]: one random crop (each side at
    least crop_min of the frame's) resized to (H, W), and a random horizontal flip."""
    h, w = frames.shape[1:3]
    s = rng.uniform(self.crop_min, 1.0)
    ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    flip = rng.random() < 0.5
    out = []
    for f in frames:
      im = Image.fromarray(np.ascontiguousarray(f[y:y + ch, x:x + cw]))
      im = np.asarray(im.resize((self.width, self.height), Image.BILINEAR))
      out.append(im[:, ::-1] if flip else im)
    return np.stack(out).astype(np.float32) / 127.5 - 1.0


def check_config(config, video_ae) -> None:
  """data.refs & co: a mixture, sizes the autoencoders take (`video_ae()`: the config's video
  autoencoder, shapes only)."""
  d = config.data
  unknown = set(d.refs.keys()) - {"none", "image", "video"}
  check(not unknown, "data.refs", f"unknown kinds {sorted(unknown)}; known: none, image, "
        "video")
  weights = [float(v) for v in d.refs.values()]
  check(all(w >= 0 for w in weights) and sum(weights) > 0, "data.refs",
        "weights must be >= 0 with a positive sum")
  check(0.0 <= d.audio_ref_rate <= 1.0, "data.audio_ref_rate", "must be in [0, 1]")
  check(0.0 < d.ref_crop_min <= 1.0, "data.ref_crop_min", "must be in (0, 1]")
  mix = dict(d.refs)
  if mix.get("image", 0) > 0:
    check(isinstance(d.ref_images, int) and d.ref_images >= 1, "data.ref_images",
          "must be an int >= 1")
  if mix.get("video", 0) > 0:
    check(isinstance(d.ref_video_frames, int) and d.ref_video_frames >= 1,
          "data.ref_video_frames", "must be an int >= 1")
    try:
      video_ae().latent_frames(d.ref_video_frames)
    except ValueError as e:
      raise ConfigError("data.ref_video_frames", str(e)) from None
  if d.audio_ref_rate > 0:
    check(d.audio_ref_seconds > 0, "data.audio_ref_seconds", "must be positive")
  if enabled(d):
    check(d.format == "clips", "data.refs", "references are cut from pixel clips: needs "
          "data.format=clips")
