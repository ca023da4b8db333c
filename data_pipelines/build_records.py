"""Builds training records from real media: videos (with or without sound), images, audio.

  python -m data_pipelines.build_records --src=DIR_OR_MANIFEST --out=OUT [--workers=N] \
      [--chunk_size=16] [--config=configs/tiny.py --config.data.resolutions='((256,256),)']

Inputs: a folder, searched recursively for videos (mp4/mov/mkv/webm/avi/m4v/ts), images
(jpg/png/webp) and audio (wav/flac/mp3/ogg/oga/opus/m4a/aac), a container's kind decided by
probing its streams (sound only: audio; cover art is not video); every other file, and a
caption with no media file, is listed in skipped.jsonl with its reason. Each input has an
optional sidecar caption `NAME.txt` (wrapped in
`<text>..</text>` unless it already has tags) or `NAME.json` (fields text, sfx, dialogue,
singing, bgm become `<text>..</text><sfx>..</sfx>...` in that order); or a JSONL / CSV
manifest with a `path` column (relative to the manifest's folder) and the same caption fields
or one `caption` string. Masks, references, edit sources, instructions and audio masks come
from sidecars (`NAME.mask.mp4|.png`, `NAME.mask/`, `NAME.ref*.png|mp4`) or manifest columns
(`target`, `source_video`, `mask`, `references`, `instruction`, `audio_mask`), read through
the input's own geometry (data_pipelines/sidecars.py); a sidecar with no input is reported.

Shots (data_pipelines/cuts.py): cuts detected on the decoded frames (data.cut_threshold);
clips hold at most data.max_shots_per_clip shots, no cut within data.shot_margin_seconds of
an edge. Shot captions (`NAME.shots.json`, a manifest's `shots`) land on each record's own
timeline; index.json's `shots` counts videos with cuts but no shot captions.

Every input is cut into the config's shape buckets (skyreels_jax/data/buckets.py): video frames
are resampled to data.fps (nearest frame), resized to cover the closest-aspect resolution and
centre-cropped, cut into consecutive clips of the longest duration that fits (again on the
rest; shorter leftovers are dropped); sound is resampled to data.sample_rate and
data.audio_channels and cut to the same spans. Images give 1-frame "image" records, audio
files "audio" records. Each record's `source` is `relative/path@start_seconds`.

Output, restartable: sorted inputs are split into fixed chunks, each one unit of work:
  OUT/<bucket>/chunk-00003.array_record   chunk 3's records of that bucket
  OUT/_chunks/chunk-00003.json            done marker (counts, shards, skipped files)
  OUT/index.json, OUT/skipped.jsonl       rebuilt from all done markers at the end of each run
A restart skips the chunks whose marker matches their inputs (paths, sizes, mtimes, captions).
"""

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from typing import Any, Iterator

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from skyreels_jax.data import buckets as buckets_lib
from skyreels_jax.data import records
from skyreels_jax.data import references
from skyreels_jax.data import shots as shots_lib
from skyreels_jax.data.media import AudioTrack, FrameSampler, cover, padded_audio

from data_pipelines import cuts
from data_pipelines import sidecars

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac")
SIDECAR_EXTS = (".txt", ".json")   # captions: part of their media file, never inputs
CHUNKS_DIR = "_chunks"

log = logging.getLogger(__name__)


class SkipFile(Exception):
  """An input that yields no record; the message is the reason written to skipped.jsonl."""


# ---------------------------------------------------------------------------------- inputs


def media_kind(path: str) -> str | None:
  ext = os.path.splitext(path)[1].lower()
  for kind, exts in (("video", VIDEO_EXTS), ("image", IMAGE_EXTS), ("audio", AUDIO_EXTS)):
    if ext in exts:
      return kind
  return None


def probe_kind(path: str) -> str:
  """What an input is, from its streams (PyAV) for audio / video containers: a container
  with a real video stream is a video (cover art does not count), one with sound only is
  audio, whatever its extension says. Raises SkipFile with the reason otherwise."""
  kind = media_kind(path)
  if kind is None:
    raise SkipFile(f"unsupported file type ({os.path.splitext(path)[1] or 'no extension'}: "
                   "not an image, video or audio file)")
  if kind == "image":
    return kind
  with _open_media(path) as container:
    pictures = [s for s in container.streams.video
                if not s.disposition & av.stream.Disposition.attached_pic]
    if pictures:
      return "video"
    if container.streams.audio:
      return "audio"
  raise SkipFile("no decodable video or audio stream")


def list_inputs(src: str) -> list[dict[str, Any]]:
  """Inputs sorted by relative path: dicts with path, rel, caption and a fingerprint (size,
  mtime, caption) that tells a restart whether the input changed. In a folder every file is
  an input (what is not media is skipped with its reason) except caption sidecars, which
  belong to their media file; a sidecar with no media file is reported."""
  if os.path.isdir(src):
    rows = []
    for root, dirs, files in os.walk(src):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      stems = {os.path.splitext(n)[0] for n in files
               if os.path.splitext(n)[1].lower() not in SIDECAR_EXTS
               and sidecars.sidecar_of(n) is None}
      found: dict[str, list[tuple[str, str]]] = {}    # stem -> [(kind, name)]
      here = []
      for name in list(dirs):   # NAME.mask/: PNG frames of a mask, never inputs
        owner = sidecars.sidecar_of(name, is_dir=True)
        if owner is not None:
          dirs.remove(name)
          if owner[0] in stems:
            found.setdefault(owner[0], []).append(owner[1:] + (name,))
          else:
            rows.append(dict(path=os.path.join(root, name), caption="",
                             rel=os.path.relpath(os.path.join(root, name), src),
                             error="mask sidecar with no media file beside it"))
      for name in files:
        if name.startswith("."):
          continue
        path = os.path.join(root, name)
        stem, ext = os.path.splitext(name)
        row = dict(path=path, rel=os.path.relpath(path, src), caption="")
        owner = sidecars.sidecar_of(name)
        if owner is not None:
          if owner[0] in stems:
            found.setdefault(owner[0], []).append(owner[1:] + (name,))
            continue          # a mask or reference of its media file
          row["error"] = f"{owner[1]} sidecar with no media file beside it"
        elif ext.lower() in SIDECAR_EXTS:
          if stem in stems:
            continue          # a caption of its media file
          row["error"] = "caption sidecar with no media file beside it"
        else:
          here.append(row)
        rows.append(row)
      for row in here:
        sidecars.attach(row, root, found)
  elif os.path.isfile(src):
    rows = _manifest_rows(src)
  else:
    raise FileNotFoundError(f"--src {src!r} is neither a folder nor a manifest file")
  rows.sort(key=lambda r: r["rel"])
  for row in rows:
    if not row["caption"] and "error" not in row:
      try:
        row["caption"] = sidecars.sidecar_caption(row["path"])
      except (OSError, ValueError) as e:  # the file is skipped with this reason, not the run.
        row["error"] = f"bad caption sidecar: {_short(e)}"
    try:
      st = os.stat(row["path"])
      stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
      stamp = "missing"
    row["fingerprint"] = hashlib.sha1(
        f"{row['rel']}\0{stamp}\0{row['caption']}\0{sidecars.stamp(row)}".encode()
    ).hexdigest()[:16]
  return rows


def _manifest_rows(manifest: str) -> list[dict[str, Any]]:
  base = os.path.dirname(os.path.abspath(manifest))
  with open(manifest, encoding="utf-8", newline="") as f:
    if manifest.lower().endswith(".csv"):
      entries = list(csv.DictReader(f))
    elif manifest.lower().endswith(".jsonl"):
      entries = [json.loads(line) for line in f if line.strip()]
    else:
      raise ValueError(f"manifest {manifest!r} must be .jsonl or .csv")
  rows = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or not (entry.get("path") or entry.get("target")):
      raise ValueError(f"{manifest} row {i + 1} has no `path` (or `target`)")
    rel = os.path.normpath(entry.get("path") or entry["target"])
    path = os.path.join(base, rel)
    rows.append(dict(path=path, rel=rel, caption=sidecars.caption_from_fields(entry),
                     **sidecars.manifest_fields(entry, base)))
  return rows


# ---------------------------------------------------------------------------------- geometry


def geometry_from_config(data_config) -> dict[str, Any]:
  """The plain-data geometry the workers need (and index.json records), from `data`."""
  fps, sr, ch = float(data_config.fps), int(data_config.sample_rate), int(
      data_config.audio_channels)
  if fps <= 0 or sr <= 0:
    raise ValueError(f"data.fps ({fps}) and data.sample_rate ({sr}) must be positive")
  if ch not in (1, 2):
    raise ValueError(f"data.audio_channels must be 1 or 2, got {ch}")
  frames = sorted(set(buckets_lib.durations_frames(data_config)))
  if min(frames) <= 0:
    raise ValueError(f"data.durations give {frames} frames at {fps} fps; all must be >= 1")
  end = bool(data_config.endpoint_frame)
  if data_config.max_shots_per_clip < 1 or data_config.shot_margin_seconds < 0:
    raise ValueError("data.max_shots_per_clip must be >= 1 and data.shot_margin_seconds >= 0")
  return dict(fps=fps, sample_rate=sr, audio_channels=ch, endpoint_frame=end,
              resolutions=[list(r) for r in buckets_lib.resolutions(data_config)],
              durations=[(f - end) / fps for f in frames], durations_frames=frames,
              max_shots_per_clip=int(data_config.max_shots_per_clip),
              shot_margin_seconds=float(data_config.shot_margin_seconds),
              cut_threshold=float(data_config.cut_threshold))


def _data_config(geometry: dict[str, Any]):
  """A `data` section equivalent to `geometry`, for the buckets module."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      fps=geometry["fps"], sample_rate=geometry["sample_rate"], height=0, width=0,
      num_frames=0, resolutions=tuple(tuple(r) for r in geometry["resolutions"]),
      durations=tuple(geometry["durations"]),
      endpoint_frame=bool(geometry.get("endpoint_frame", False))))


# ---------------------------------------------------------------------------------- decoding


def _open_media(path: str):
  if not os.path.isfile(path):
    raise SkipFile("file not found")
  try:
    return av.open(path)
  except av.error.FFmpegError as e:
    raise SkipFile(f"cannot open: {_short(e)}") from e


def video_clips(inp: dict[str, Any], geometry: dict[str, Any]) -> Iterator[tuple[str, dict]]:
  """(bucket name, clip) for every clip of a video file. The file is decoded whole (frames
  at bucket size) before any clip is given, so a file that fails part-way is skipped whole."""
  fps, sr, ch = geometry["fps"], geometry["sample_rate"], geometry["audio_channels"]
  with _open_media(inp["path"]) as container:
    if not container.streams.video:
      raise SkipFile("no video stream")
    vstream = container.streams.video[0]
    streams = [vstream] + list(container.streams.audio[:1])
    sampler = FrameSampler(fps, [tuple(r) for r in geometry["resolutions"]])
    track = AudioTrack(sr, ch) if len(streams) > 1 else None
    rate = vstream.average_rate or vstream.guessed_rate
    for packet in container.demux(*streams):
      for frame in packet.decode():
        if packet.stream.type == "audio":
          track.add(frame)
        elif frame.time is not None:  # containers stamp every frame; skip one that is not.
          sampler.add(frame, frame.time)
    sampler.finish(rate)
  if not sampler.frames:
    raise SkipFile("zero decodable video frames")
  video = np.stack(sampler.frames)
  audio = track.finish() if track is not None else None
  num_frames = len(video)
  if audio is not None:
    if not len(audio):
      raise SkipFile("audio stream has no decodable samples")
    # Clips need sound over their whole span, give or take a frame: stop where sound ends.
    audio_end = track.start + len(audio) / sr
    num_frames = min(num_frames, int(np.floor((audio_end - sampler.t0) * fps + 1e-6)) + 1)
  if num_frames < min(geometry["durations_frames"]):
    raise SkipFile(f"shorter than every duration bucket ({num_frames / fps:.3f} s < "
                   f"{min(geometry['durations_frames']) / fps:.3f} s)")
  try:
    captioned = sidecars.read_shots(inp, len(video) / fps)
  except ValueError as e:
    raise SkipFile(f"bad shots: {e}") from None
  spans, found = cuts.video_spans(video[:num_frames], fps, captioned, geometry)
  if not spans:
    raise SkipFile(f"no clip of {geometry['durations_frames']} frames holds at most "
                   f"{geometry['max_shots_per_clip']} shots with no cut within "
                   f"{geometry['shot_margin_seconds']} s of its edges ({len(found)} cuts)")
  inp["cuts_found"] = len(found)   # the chunk's report counts multi-shot inputs
  h, w = sampler.size
  try:
    given = sidecars.video_given(inp, sampler, (h, w))
    audio_keep = None
    if inp.get("audio_mask"):
      if audio is None:
        raise ValueError("audio_mask: the video has no sound")
      audio_keep = sidecars.audio_keep_samples(inp["audio_mask"], len(audio), sr, track.start)
  except ValueError as e:
    raise SkipFile(str(e)) from None
  for start, length in spans:
    clip = dict(kind="video", video=video[start:start + length], fps=fps,
                caption=inp["caption"], source=f"{inp['rel']}@{start / fps:.3f}",
                instruction=inp.get("instruction"), references=given.get("references"),
                shots=shots_lib.clip_shots(captioned, start / fps, (start + length) / fps)
                if captioned else None)
    for key in ("mask", "source_video"):    # the clip's frames (a static mask: all)
      if key in given:
        clip[key] = given[key] if len(given[key]) == 1 and key == "mask" else (
            given[key][start:start + length])
    if audio is not None:
      first = int(round((sampler.t0 + start / fps - track.start) * sr))
      samples = buckets_lib.samples_for_frames(length, fps, sr,
                                               geometry.get("endpoint_frame", False))
      clip.update(audio=padded_audio(audio, first, samples), sample_rate=sr)
      if audio_keep is not None:   # samples past the track are silence, kept
        regen = padded_audio(1.0 - audio_keep[:, None].astype(np.float32), first, samples)
        clip["audio_mask"] = (regen[:, 0] < 0.5).astype(np.uint8)
    yield f"{h}x{w}x{length}", clip


def audio_clips(inp: dict[str, Any], geometry: dict[str, Any]) -> Iterator[tuple[str, dict]]:
  """(bucket name, clip) for every clip of an audio file."""
  fps, sr = geometry["fps"], geometry["sample_rate"]
  with _open_media(inp["path"]) as container:
    if not container.streams.audio:
      raise SkipFile("no audio stream")
    track = AudioTrack(sr, geometry["audio_channels"])
    for frame in container.decode(container.streams.audio[0]):
      track.add(frame)
    audio = track.finish()
  if not len(audio):
    raise SkipFile("zero decodable audio samples")
  pictures = [k for k in sidecars.PATH_FIELDS if inp.get(k)]
  if pictures:
    raise SkipFile(f"a sound-only input cannot have {pictures}")
  try:
    keep = (sidecars.audio_keep_samples(inp["audio_mask"], len(audio), sr, track.start or 0.0)
            if inp.get("audio_mask") else None)
  except ValueError as e:
    raise SkipFile(str(e)) from None
  samples = [buckets_lib.samples_for_frames(f, fps, sr, geometry.get("endpoint_frame", False))
             for f in geometry["durations_frames"]]
  spans = cuts.plan_clips(len(audio), [], samples)
  if not spans:
    raise SkipFile(f"shorter than every duration bucket ({len(audio) / sr:.3f} s < "
                   f"{min(samples) / sr:.3f} s)")
  for start, length in spans:
    yield f"audio_{length}", dict(kind="audio", audio=audio[start:start + length],
                                  sample_rate=sr, caption=inp["caption"],
                                  source=f"{inp['rel']}@{start / sr:.3f}",
                                  instruction=inp.get("instruction"),
                                  audio_mask=None if keep is None
                                  else keep[start:start + length])


def image_clips(inp: dict[str, Any], geometry: dict[str, Any]) -> Iterator[tuple[str, dict]]:
  """The one image record of an image file."""
  if not os.path.isfile(inp["path"]):
    raise SkipFile("file not found")
  try:
    with Image.open(inp["path"]) as img:
      img = img.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise SkipFile(f"cannot open: {_short(e)}") from e
  h, w = buckets_lib.closest_resolution(img.height, img.width,
                                        [tuple(r) for r in geometry["resolutions"]])
  pixels = cover(img, h, w)
  try:
    given = sidecars.image_given(inp, img, (h, w))
  except ValueError as e:
    raise SkipFile(str(e)) from None
  yield f"image_{h}x{w}", dict(kind="image", video=pixels[None], fps=geometry["fps"],
                               caption=inp["caption"], source=f"{inp['rel']}@0.000",
                               instruction=inp.get("instruction"), **given)


_CLIPS_BY_KIND = dict(video=video_clips, audio=audio_clips, image=image_clips)


def _short(e: Exception) -> str:
  return f"{type(e).__name__}: {e}"[:300]


# ---------------------------------------------------------------------------------- chunks


def chunk_name(chunk_id: int) -> str:
  return f"chunk-{chunk_id:05d}"


def process_chunk(task: tuple[int, list[dict[str, Any]], str, dict[str, Any]]) -> dict:
  """Writes one chunk's shards (temporary names, renamed when complete), then its marker."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  chunk_id, inputs, out, geometry = task
  start_time = time.perf_counter()
  name = chunk_name(chunk_id)
  writers, counts, skipped, used, sources = {}, {}, [], [], {}
  multi_shot, uncaptioned = 0, []   # inputs with cuts; those of them without shot captions
  for inp in inputs:
    try:
      if inp.get("error"):
        raise SkipFile(inp["error"])
      kind = probe_kind(inp["path"])
      encoded = [(bucket, records.encode_clip(clip),
                  clip["kind"] == "video" and clip.get("audio") is None, clip.get("source"))
                 for bucket, clip in _CLIPS_BY_KIND[kind](inp, geometry)]
    except Exception as e:  # pylint: disable=broad-except  # one bad file never stops a run.
      skipped.append(dict(path=inp["rel"], reason=str(e) if isinstance(e, SkipFile)
                          else _short(e)))
      continue
    for bucket, data, silent, source in encoded:
      if bucket not in writers:
        os.makedirs(os.path.join(out, bucket), exist_ok=True)
        writers[bucket] = array_record_module.ArrayRecordWriter(
            os.path.join(out, bucket, f"{name}.array_record.tmp"), "group_size:1")
        counts[bucket] = dict(num_records=0, without_audio=0,
                              shard=f"{bucket}/{name}.array_record")
      writers[bucket].write(data)
      sources.setdefault(bucket, []).append(source)
      counts[bucket]["num_records"] += 1
      counts[bucket]["without_audio"] += int(silent)
    used.append(inp["rel"])
    if inp.get("cuts_found"):
      multi_shot += 1
      if not inp.get("shots"):
        uncaptioned.append(inp["rel"])
  for bucket, writer in writers.items():
    writer.close()
    final = os.path.join(out, counts[bucket]["shard"])
    references.write_sidecar(final, sources[bucket])   # for in-context references
    os.replace(final + ".tmp", final)
  marker = dict(chunk=chunk_id, fingerprints=[i["fingerprint"] for i in inputs],
                geometry=geometry, buckets=counts, used=used, skipped=skipped,
                multi_shot=multi_shot, without_shot_captions=uncaptioned,
                seconds=round(time.perf_counter() - start_time, 3))
  _write_json(os.path.join(out, CHUNKS_DIR, f"{name}.json"), marker)
  return marker


def _write_json(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def _load_markers(out: str) -> dict[int, dict]:
  folder = os.path.join(out, CHUNKS_DIR)
  markers = {}
  if os.path.isdir(folder):
    for name in sorted(os.listdir(folder)):
      if re.fullmatch(r"chunk-\d{5}\.json", name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          marker = json.load(f)
        markers[marker["chunk"]] = marker
  return markers


# ---------------------------------------------------------------------------------- index


def write_index(out: str, geometry: dict[str, Any], markers: list[dict]) -> dict[str, Any]:
  """index.json and skipped.jsonl from the done markers of every chunk."""
  known = {b.name: b for b in buckets_lib.all_buckets(_data_config(geometry))}
  per_bucket: dict[str, dict] = {}
  skipped, used, multi_shot, uncaptioned = [], 0, 0, []
  for marker in sorted(markers, key=lambda m: m["chunk"]):
    used += len(marker["used"])
    multi_shot += marker["multi_shot"]
    uncaptioned += marker["without_shot_captions"]
    skipped += marker["skipped"]
    for name, c in marker["buckets"].items():
      b = known[name]
      entry = per_bucket.setdefault(name, dict(
          kind=b.kind, height=b.height, width=b.width, num_frames=b.num_frames,
          num_samples=b.num_samples, num_records=0, without_audio=0, shards=[]))
      entry["num_records"] += c["num_records"]
      entry["without_audio"] += c["without_audio"]
      entry["shards"].append(dict(path=c["shard"], num_records=c["num_records"]))
  order = {name: i for i, name in enumerate(known)}
  per_bucket = dict(sorted(per_bucket.items(), key=lambda kv: order[kv[0]]))
  by_kind = {k: sum(e["num_records"] for e in per_bucket.values() if e["kind"] == k)
             for k in buckets_lib.KINDS}
  index = dict(
      schema_version=records.SCHEMA_VERSION,
      geometry={k: geometry[k] for k in ("fps", "sample_rate", "audio_channels",
                                         "resolutions", "durations")},
      buckets=per_bucket,
      totals=dict(num_records=sum(by_kind.values()), **{f"{k}_records": v
                                                        for k, v in by_kind.items()},
                  without_audio=sum(e["without_audio"] for e in per_bucket.values())),
      inputs=dict(total=used + len(skipped), used=used, skipped=len(skipped)),
      # videos with detected cuts; those with no shot captions keep their whole caption
      shots=dict(multi_shot_videos=multi_shot, without_shot_captions=len(uncaptioned),
                 without_shot_captions_files=uncaptioned),
  )
  _write_json(os.path.join(out, "index.json"), index)
  with open(os.path.join(out, "skipped.jsonl.tmp"), "w", encoding="utf-8") as f:
    for row in skipped:
      f.write(json.dumps(row) + "\n")
  os.replace(os.path.join(out, "skipped.jsonl.tmp"), os.path.join(out, "skipped.jsonl"))
  return index


def build(src: str, out: str, data_config, *, workers: int = 1,
          chunk_size: int = 16) -> dict[str, Any]:
  """Builds (or finishes building) the records of `src` into `out`; returns the index."""
  if chunk_size <= 0 or workers <= 0:
    raise ValueError(f"chunk_size ({chunk_size}) and workers ({workers}) must be positive")
  geometry = geometry_from_config(data_config)
  inputs = list_inputs(src)
  os.makedirs(out, exist_ok=True)
  chunks = [inputs[i:i + chunk_size] for i in range(0, len(inputs), chunk_size)]
  markers = _load_markers(out)
  for chunk_id, marker in sorted(markers.items()):
    if marker["geometry"] != geometry:
      raise ValueError(f"{out} was built with another geometry ({marker['geometry']}, now "
                       f"{geometry}): write to a new --out")
    current = chunks[chunk_id] if chunk_id < len(chunks) else None
    if current is None or marker["fingerprints"] != [i["fingerprint"] for i in current]:
      log.info("%s: its inputs changed; redoing it", chunk_name(chunk_id))
      os.remove(os.path.join(out, CHUNKS_DIR, chunk_name(chunk_id) + ".json"))
      del markers[chunk_id]
  pending = [(i, chunk, out, geometry) for i, chunk in enumerate(chunks) if i not in markers]
  log.info("%d inputs in %d chunks: %d done earlier, %d to do, %d worker(s)", len(inputs),
           len(chunks), len(chunks) - len(pending), len(pending), workers)
  results = _run(pending, workers)
  bar = tqdm(total=sum(len(c) for _, c, _, _ in pending), unit="file", desc="build_records",
             disable=None)   # a terminal only: off in logs and pipes
  for marker in results:
    bar.update(len(marker["used"]) + len(marker["skipped"]))
    markers[marker["chunk"]] = marker
    log.info("%s: %d used, %d skipped, %d records in %.1f s", chunk_name(marker["chunk"]),
             len(marker["used"]), len(marker["skipped"]),
             sum(c["num_records"] for c in marker["buckets"].values()), marker["seconds"])
  bar.close()
  _remove_unlisted_shards(out, markers)
  return write_index(out, geometry, list(markers.values()))


def _remove_unlisted_shards(out: str, markers: dict[int, dict]) -> None:
  """Shards no marker lists (left by a crashed or changed chunk) would reach the loader,
  which reads every shard of a bucket folder."""
  listed = {c["shard"] for m in markers.values() for c in m["buckets"].values()}
  for entry in os.scandir(out):
    if entry.is_dir() and entry.name != CHUNKS_DIR:
      for name in os.listdir(entry.path):
        shard = re.fullmatch(r"(chunk-\d{5}\.array_record)(\.tmp|\.sources\.json)?", name)
        if shard and f"{entry.name}/{shard.group(1)}" not in listed:
          os.remove(os.path.join(entry.path, name))


def _run(tasks: list, workers: int) -> Iterator[dict]:
  if workers == 1 or len(tasks) <= 1:
    yield from map(process_chunk, tasks)
    return
  # spawn: forked children would inherit the parent's decoder and XLA threads.
  with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
    yield from pool.imap_unordered(process_chunk, tasks)


# ---------------------------------------------------------------------------------- CLI


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  f = flags.FLAGS
  start = time.perf_counter()
  index = build(f.src, f.out, f.config.data, workers=f.workers, chunk_size=f.chunk_size)
  inputs, totals = index["inputs"], index["totals"]
  if not inputs["used"]:
    print(f"error: no usable input in {f.src!r}: {inputs['total']} file(s), "
          f"{inputs['skipped']} skipped (reasons in {os.path.join(f.out, 'skipped.jsonl')})",
          file=sys.stderr)
    sys.exit(2)    # the user's data, not our bug: a usage error
  print(f"{totals['num_records']} records ({totals['video_records']} video, "
        f"{totals['image_records']} image, {totals['audio_records']} audio; "
        f"{totals['without_audio']} videos without audio) in {len(index['buckets'])} buckets "
        f"from {inputs['used']} files ({inputs['skipped']} skipped; "
        f"{index['shots']['multi_shot_videos']} multi-shot videos, "
        f"{index['shots']['without_shot_captions']} of them without shot captions) to {f.out}, "
        f"{time.perf_counter() - start:.1f} s")


def _define_flags():
  """Flags are defined only when run as a script, so importing this module registers none."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  default_config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs", "tiny.py")
  flags.DEFINE_string("src", None, "Folder of media files, or a .jsonl/.csv manifest.",
                      required=True)
  flags.DEFINE_string("out", None, "Output folder (one sub-folder per bucket).", required=True)
  flags.DEFINE_integer("workers", 1, "Worker processes (one chunk of inputs each at a time).")
  flags.DEFINE_integer("chunk_size", 16, "Input files per unit of work (and per shard).")
  config_flags.DEFINE_config_file("config", default_config,
                                  "Config file; the geometry comes from its `data` section.")


if __name__ == "__main__":
  from data_pipelines import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(_main)
