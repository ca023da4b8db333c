"""grain input pipeline: ArrayRecord clips -> per-process batches, resumable from a checkpoint.

Shape buckets (data/buckets.py): `data.path` holds one folder of shards per bucket
(`<path>/<bucket name>/*.array_record`, as data_pipelines.build_records writes them) and/or
flat shards (`<path>/*.array_record`: the config's single geometry). Each bucket runs the
pipeline below; `IterDataset.mix` interleaves the buckets' batches by `data.bucket_weights`
(default: record counts), deterministically, so every process draws the same bucket for the
same step and a batch always has one shape (one compile per bucket).

  source (one bucket's ArrayRecord shards)
  -> seed + shuffle (data.shuffle)              one global order, the same on every process,
                                                reshuffled every epoch
  -> repeat forever
  -> decode + preprocess (lazy, in read threads) bad record -> BadRecord marker, not an error
  -> this process's block of each global batch  local i -> global (i // b) * B + p * b + i % b
  -> to_iter_dataset
  -> skip BadRecords                            each kept example carries how many it skipped
  -> batch (b = global_batch_size // process_count, drop_remainder)
  -> mp_prefetch (data.num_workers > 0)
  -> count bad records                          pops the per-example count, keeps a total

Process p of P reads (and decodes) only rows [p * b, (p + 1) * b) of every global batch of
B = P * b, so P processes together see exactly the batches one process would: a run's data
does not depend on how many hosts feed it. A bad record is replaced by the next example of
the same process's stream, which shifts that process's later examples by one (its share
stays disjoint from the others'; only the exact equality with a one-process run is lost).

Batches are dicts of numpy arrays with a leading batch dim: `video` uint8 (B, T, H, W, 3)
pixels (scaled to [-1, 1] on the device, tasks/examples.from_wire: 4x less host -> device
traffic), `audio` float32 (B, S, C) in [-1, 1], `has_video` / `has_audio` bool (B,), plus the
tokenizer's fields (`text_ids` int32 (B, L), `text_mask` bool (B, L)), plus, with data-given
tasks in the mixture, the records' masks, sources, references and edit prompts
(data/given.py). By bucket kind:
  video  clips at the bucket's size; a clip without sound has zero audio, has_audio False
  image  1-frame videos (T2I); no audio field
  audio  sound alone (T2A); `video` is black at the smallest bucket resolution for the
         bucket's duration, has_video False (the train step drops that stream)

With references on (data.refs / data.audio_ref_rate, data/references.py) the stream is of
record indices and each example also carries reference pixels / sound cut from another
record of its source video (ref_images, ref_image_count, ref_video, has_ref_video,
ref_audio, has_ref_audio), drawn with a per-example generator (grain random_map), so the
draws are as deterministic and resumable as the data order.

Bad records (corrupt bytes, wrong schema version, clips that do not fit the config geometry)
are logged and dropped. Their running total lives in the iterator's state, so it is saved in
the checkpoint with the data position; read it with `iterator_stats(it)["bad_records"]`.
The count travels through the data rather than through a process-global counter so that it is
exact with multiprocessing workers and after a restore.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Callable

from absl import logging
import grain
import numpy as np
from absl import flags

from skyreels_jax.data import buckets as buckets_lib
from skyreels_jax.data import given as given_lib
from skyreels_jax.data import latents
from skyreels_jax.data.prefetch import DevicePrefetch
from skyreels_jax.data import records
from skyreels_jax.data import references
from skyreels_jax.data import shots as shots_lib
from skyreels_jax.data import split
from skyreels_jax.data.records import BadRecord

# Stop instead of spinning forever when a data set holds (almost) nothing usable.
MAX_CONSECUTIVE_BAD_RECORDS = 1000
_BAD_KEY = "bad_records"


def find_shards(path: str) -> list[str]:
  """Flat ArrayRecord shards of `data.path`: a folder (its *.array_record) or a glob."""
  if not path:
    raise ValueError("data.path is empty: point it at a folder of ArrayRecord shards "
                     "(python -m data_pipelines.synthetic --out=DIR writes one)")
  pattern = os.path.join(path, "*.array_record") if os.path.isdir(path) else path
  return sorted(glob.glob(pattern))


def bucket_sources(data_config, path: str | None = None
                   ) -> dict[str, tuple[buckets_lib.Bucket, list[str]]]:
  """{bucket name: (bucket, shards)} under `path` (default data.path): a folder per bucket
  of the config (folders of other buckets are left out, logged) plus flat shards as the
  config's single geometry. Raises ValueError when nothing usable is found."""
  path = data_config.path if path is None else path
  found: dict[str, tuple[buckets_lib.Bucket, list[str]]] = {}
  flat = find_shards(path)
  if flat:
    f = int(data_config.num_frames)
    geometry = buckets_lib.Bucket("video", int(data_config.height), int(data_config.width), f,
                                  buckets_lib.samples_for_frames(
                                      f, data_config.fps, data_config.sample_rate,
                                      data_config.endpoint_frame))
    found[geometry.name] = (geometry, flat)
  if os.path.isdir(path):
    known = {b.name: b for b in buckets_lib.all_buckets(data_config)}
    for sub in sorted(os.listdir(path)):
      shards = sorted(glob.glob(os.path.join(path, sub, "*.array_record")))
      if not shards:
        continue
      if sub not in known:
        logging.info("data.path: leaving out bucket %s (not among the config's buckets)", sub)
        continue
      if sub in found:
        found[sub] = (known[sub], found[sub][1] + shards)
      else:
        found[sub] = (known[sub], shards)
  if not found:
    field = "data.path" if path == data_config.path else "data.eval_path"
    raise ValueError(f"{field}={path!r} holds no ArrayRecord shards for this config's "
                     f"buckets {[b.name for b in buckets_lib.all_buckets(data_config)]}")
  return found


def make_dataset(data_config, *, tokenizer: Callable[[str], dict[str, np.ndarray]],
                 global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, encoders: dict | None = None,
                 video_latent_shape: Callable[[int, int, int], tuple] | None = None,
                 text_frozen: bool = False) -> grain.IterDataset:
  """The full pipeline for this process; `iter()` of it is a resumable `grain.DatasetIterator`.

  Args:
    data_config: the config's `data` section (path, geometry, buckets, shuffle, num_workers).
    tokenizer: picklable `caption -> dict of numpy arrays` (merged into each example).
    global_batch_size: batch over all processes; each process yields `global // count`.
    seed: shuffle seed (the same on every process: all share one global order).
    process_index, process_count: which block of each global batch this process reads
      (`multihost.data_shard`; usually jax.process_index(), jax.process_count()).
    encoders, video_latent_shape: data.format = "latents" only: the run's encoder identity
      (data/latents.py; latents of other encoders are refused) and (frames, height, width)
      -> video latent shape, for the stand-in video of sound-only buckets; text_frozen:
      the run's text encoder is frozen, so latents must carry its embeddings.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"data.batch_size {global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  batch_size = global_batch_size // process_count
  if batch_size <= 0:
    raise ValueError(f"data.batch_size must be positive, got {global_batch_size}")

  per_bucket, counts = _bucket_pipelines(
      data_config, data_config.path, tokenizer=tokenizer, batch_size=batch_size, seed=seed,
      process_index=process_index, process_count=process_count, encoders=encoders,
      video_latent_shape=video_latent_shape, text_frozen=text_frozen, evaluating=False)
  if not per_bucket:
    raise ValueError(f"data.path={data_config.path!r} holds no records"
                     + (" outside the held-out split" if data_config.eval_fraction else ""))
  weights = {k: w for k, w in bucket_weights(data_config, counts).items() if w > 0}
  if len(weights) == 1:
    it_ds = per_bucket[next(iter(weights))]
  else:
    it_ds = grain.IterDataset.mix({k: per_bucket[k] for k in weights}, weights)
  if data_config.num_workers > 0:
    # grain 0.2.18 workers read an absl flag; unparsed flags (pytest, notebooks) crash them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return _CountBadRecordsIterDataset(it_ds)


def make_eval_datasets(data_config, *, tokenizer, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, max_batches: int = 0,
                       encoders: dict | None = None, video_latent_shape=None,
                       text_frozen: bool = False) -> dict[str, grain.IterDataset]:
  """The held-out set (data.eval_path, or the data.eval_fraction split of data.path;
  data/split.py) as {bucket: finite dataset of this process's blocks of the global
  batches}: in record order, the same batches at every evaluation, on every mesh and after
  a restart; full global batches only, at most `max_batches` per bucket (0: all). Bad
  records are skipped (the batch takes the next record). ValueError when no bucket holds
  a full batch."""
  path = data_config.eval_path or data_config.path
  per_bucket, counts = _bucket_pipelines(
      data_config, path, tokenizer=tokenizer, batch_size=global_batch_size // process_count,
      seed=seed, process_index=process_index, process_count=process_count,
      encoders=encoders, video_latent_shape=video_latent_shape, text_frozen=text_frozen,
      evaluating=True, max_batches=max_batches)
  if not per_bucket:
    field = "data.eval_path" if data_config.eval_path else "data.eval_fraction"
    raise ValueError(f"{field}: the held-out set ({sum(counts.values())} records: {counts}) "
                     f"holds no full batch of {global_batch_size} in any bucket")
  return per_bucket


def _bucket_pipelines(data_config, path: str, *, tokenizer, batch_size: int, seed: int,
                      process_index: int, process_count: int, encoders, video_latent_shape,
                      text_frozen: bool, evaluating: bool, max_batches: int = 0):
  """({bucket: batched IterDataset of this process}, {bucket: records}) of `path`:
  training (shuffled, repeated, the held-out records left out) or evaluating (in order,
  once, only the held-out records of data.path, or all of data.eval_path)."""
  sources = bucket_sources(data_config, path)
  smallest = min(buckets_lib.resolutions(data_config), key=lambda r: (r[0] * r[1], r))
  fmt = data_config.format
  index = latents.read_index(path, encoders, text_frozen) if fmt == "latents" else None
  if index is not None and float(data_config.tasks.get("edit_pair", 0.0)) > 0 and (
      index.get("edit_prompt", "instruction") != data_config.edit_prompt):
    raise ValueError(f"{path} holds edit prompts made with data.edit_prompt="
                     f"{index.get('edit_prompt', 'instruction')!r}; this run uses "
                     f"{data_config.edit_prompt!r}: re-encode")
  per_bucket, counts = {}, {}
  with_refs = fmt == "clips" and references.enabled(data_config)
  fraction = 0.0 if data_config.eval_path else float(data_config.eval_fraction)
  for i, (name, (bucket, shards)) in enumerate(sorted(sources.items())):
    source = grain.sources.ArrayRecordDataSource(shards)
    keep = None                      # record indices of this side (None: every record)
    if fraction > 0:
      decode = latents.decode_latent_record if fmt == "latents" else None
      keep = split.indices(references.read_sources(shards, source, decode), fraction,
                           eval_side=evaluating)
    counts[name] = len(source) if keep is None else len(keep)
    if counts[name] == 0:
      continue
    # With references the stream is of record indices: a reference is another record.
    if keep is None:
      ds = grain.MapDataset.range(len(source)) if with_refs else grain.MapDataset.source(source)
    else:
      ds = grain.MapDataset.source(keep)
      if not with_refs:
        ds = ds.map(_Read(source))
    if evaluating:
      batches = counts[name] // (batch_size * process_count)
      batches = min(batches, max_batches) if max_batches else batches
      if batches == 0:
        continue
      ds = ds[:batches * batch_size * process_count]
    else:
      if data_config.shuffle:
        ds = ds.seed(seed + 7919 * i).shuffle()
      ds = ds.repeat(None)
    # Preprocessing is lazy (per index), so mapping before the process blocks costs only the
    # rows this process reads, and a reference draw's generator follows the GLOBAL position:
    # P processes draw what one process would.
    if fmt == "latents":
      ds = ds.map(latents.LatentPreprocessor.for_bucket(
          bucket, index, smallest, video_latent_shape,
          given_lib.GivenFields.from_config(data_config)))
    elif with_refs:
      ds = ds.random_map(ReferencedClips.for_bucket(bucket, data_config, tokenizer, smallest,
                                                    source, shards),
                         seed=seed + 104729 * (i + 1))
    else:
      ds = ds.map(ClipPreprocessor.for_bucket(bucket, data_config, tokenizer, smallest))
    if process_count > 1:
      ds = ProcessBlocksMapDataset(ds, block=batch_size, index=process_index,
                                   count=process_count)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=int(data_config.get("read_threads", 2))))
    per_bucket[name] = _SkipBadRecordsIterDataset(it_ds).batch(batch_size,
                                                               drop_remainder=True)
  return per_bucket, counts


@dataclasses.dataclass(frozen=True)
class _Read:
  """Record index -> its bytes (a split data set streams indices)."""
  source: Any

  def __call__(self, i) -> bytes:
    return self.source[int(i)]


def bucket_weights(data_config, counts: dict[str, int]) -> dict[str, float]:
  """Mixing weights of the buckets present (record counts unless data.bucket_weights names
  the bucket); raises ValueError when they sum to zero."""
  named = dict(data_config.bucket_weights)
  weights = {k: float(named.get(k, n)) for k, n in counts.items() if n > 0}
  if sum(weights.values()) <= 0:
    raise ValueError(f"data.bucket_weights give the buckets present {sorted(weights)} no "
                     "weight")
  return weights


def make_iterator(data_config, **kwargs) -> grain.DatasetIterator:
  """`iter(make_dataset(...))`: supports get_state/set_state and grain.checkpoint (orbax)."""
  return iter(make_dataset(data_config, **kwargs))


def iterator_stats(iterator: grain.DatasetIterator) -> dict[str, int]:
  """Counters of an iterator from `make_iterator`, or of a DevicePrefetch of one (the batches
  handed out so far: not the one it holds); they survive get_state/set_state."""
  inner = iterator.parent if isinstance(iterator, DevicePrefetch) else iterator
  if not isinstance(inner, _CountBadRecordsIterator):
    raise TypeError(f"expected an iterator from make_iterator, got {type(iterator).__name__}")
  # Read from the state: a DevicePrefetch's is its parent's from before the held batch.
  return {"bad_records": int(iterator.get_state()[_BAD_KEY])}


@dataclasses.dataclass(frozen=True)
class ClipPreprocessor:
  """Record bytes -> model example at one bucket's geometry, or a BadRecord."""
  height: int
  width: int
  num_frames: int
  fps: float
  sample_rate: int
  audio_channels: int
  tokenizer: Callable[[str], dict[str, np.ndarray]]
  kind: str = "video"
  # Audio buckets: the size of the black stand-in video (the smallest bucket resolution).
  blank_size: tuple[int, int] = (0, 0)
  endpoint_frame: bool = False    # data.endpoint_frame (buckets.samples_for_frames)
  given: given_lib.GivenFields | None = None   # data-given task fields (data/given.py)
  shot_captions: bool = False     # data.shot_captions: the caption with its shots' tags

  @classmethod
  def from_config(cls, data_config, tokenizer) -> "ClipPreprocessor":
    """The config's single geometry (data.height / width / num_frames), video clips."""
    return cls(height=int(data_config.height), width=int(data_config.width),
               num_frames=int(data_config.num_frames), fps=float(data_config.fps),
               sample_rate=int(data_config.sample_rate),
               audio_channels=int(data_config.audio_channels), tokenizer=tokenizer,
               endpoint_frame=bool(data_config.endpoint_frame),
               given=given_lib.GivenFields.from_config(data_config),
               shot_captions=bool(data_config.shot_captions))

  @classmethod
  def for_bucket(cls, bucket: buckets_lib.Bucket, data_config, tokenizer,
                 blank_size: tuple[int, int]) -> "ClipPreprocessor":
    return cls(height=bucket.height, width=bucket.width, num_frames=bucket.num_frames,
               fps=float(data_config.fps), sample_rate=int(data_config.sample_rate),
               audio_channels=int(data_config.audio_channels), tokenizer=tokenizer,
               kind=bucket.kind, blank_size=tuple(blank_size),
               endpoint_frame=bool(data_config.endpoint_frame),
               given=given_lib.GivenFields.from_config(data_config),
               shot_captions=bool(data_config.shot_captions))

  @property
  def num_samples(self) -> int:
    return buckets_lib.samples_for_frames(self.num_frames, self.fps, self.sample_rate,
                                          self.endpoint_frame)

  def __call__(self, data: bytes) -> dict[str, np.ndarray] | BadRecord:
    decoded = self.decoded(data)
    return decoded if isinstance(decoded, BadRecord) else decoded[1]

  def decoded(self, data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]] | BadRecord:
    """(the decoded record, its model example), or a BadRecord (logged)."""
    try:
      clip = records.decode_clip(data)
      return clip, self.example(clip)
    except records.RecordError as e:
      logging.log_every_n_seconds(logging.WARNING, "Skipping bad record: %s", 10, e)
      return BadRecord(str(e))

  def example(self, clip: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model example of a decoded record (RecordError when it does not fit)."""
    example = self.preprocess(clip)
    try:
      text = self.tokenizer(self.caption(clip))
    except shots_lib.ShotError as e:     # more shots than model.shot_attention tells apart
      raise records.RecordError(str(e)) from None
    clash = set(text) & set(example)
    if clash:
      raise ValueError(f"tokenizer output overwrites example fields {sorted(clash)}")
    example.update(text)
    if self.given is not None:
      example.update(self.given.fields(clip, example, self.tokenizer))
    return example

  def caption(self, clip: dict[str, Any]) -> str:
    """The text the model reads: the caption, with `data.shot_captions` its shots' tags
    (data/shots.py) for the frames this bucket keeps."""
    shots = clip.get("shots")
    if not (self.shot_captions and shots):
      return clip["caption"]
    return shots_lib.tagged_caption(clip["caption"],
                                    shots_lib.clip_shots(shots, 0.0, self.num_frames / self.fps))

  def preprocess(self, clip: dict[str, Any]) -> dict[str, np.ndarray]:
    """Checks kind and geometry, crops time (video stays uint8: the train step scales it to
    [-1, 1] on the device, tasks/examples.from_wire); RecordError when the clip
    does not fit this bucket (build_records resizes and resamples; nothing is resized here)."""
    if clip["kind"] != self.kind:
      raise records.RecordError(f"a {clip['kind']} record in a {self.kind} bucket")
    if self.kind == "audio":
      video = np.zeros((self.num_frames, *self.blank_size, 3), np.uint8)   # black
      return {"video": video, "audio": self._audio(clip), "has_video": np.bool_(False),
              "has_audio": np.bool_(True)}
    video = clip["video"]
    if video.shape[1:3] != (self.height, self.width):
      raise records.RecordError(
          f"clip is {video.shape[1]}x{video.shape[2]}, bucket wants {self.height}x{self.width} "
          "(build records with data_pipelines.build_records to resize)")
    if self.kind == "image":
      return {"video": np.ascontiguousarray(video, np.uint8), "has_video": np.bool_(True)}
    if clip["fps"] != self.fps:
      raise records.RecordError(
          f"clip is {clip['fps']} fps, config wants {self.fps} fps (build records with "
          "data_pipelines.build_records to resample)")
    if video.shape[0] < self.num_frames:
      raise records.RecordError(
          f"clip has {video.shape[0]} frames, config wants {self.num_frames}")
    video = np.ascontiguousarray(video[:self.num_frames], np.uint8)
    has_audio = clip["audio"] is not None
    audio = (self._audio(clip) if has_audio
             else np.zeros((self.num_samples, self.audio_channels), np.float32))
    return {"video": video, "audio": audio, "has_video": np.bool_(True),
            "has_audio": np.bool_(has_audio)}

  def full_audio(self, clip: dict[str, Any]) -> np.ndarray | None:
    """All of a record's sound at this rate and channel count (None: none, or another
    rate): where audio references are cut."""
    audio = clip.get("audio")
    if audio is None or clip["sample_rate"] != self.sample_rate:
      return None
    try:
      return self._channels(audio)
    except records.RecordError:
      return None

  def _audio(self, clip: dict[str, Any]) -> np.ndarray:
    """The clip's audio at num_samples x audio_channels (a short tail under one frame is
    padded; channels are averaged to mono or mono is repeated)."""
    audio = clip["audio"]
    if clip["sample_rate"] != self.sample_rate:
      raise records.RecordError(
          f"clip is {clip['sample_rate']} Hz, config wants {self.sample_rate} Hz (build "
          "records with data_pipelines.build_records to resample)")
    n = self.num_samples
    if audio.shape[0] < n:
      short = n - audio.shape[0]
      if short >= self.sample_rate / self.fps:
        raise records.RecordError(f"audio is {short} samples short of {n}")
      audio = np.pad(audio, ((0, short), (0, 0)))
    return self._channels(audio[:n])

  def _channels(self, audio: np.ndarray) -> np.ndarray:
    channels = audio.shape[1]
    if channels != self.audio_channels:
      if self.audio_channels == 1:
        audio = audio.mean(axis=1, keepdims=True)
      elif channels == 1:
        audio = np.repeat(audio, self.audio_channels, axis=1)
      else:
        raise records.RecordError(
            f"cannot map {channels} audio channels to {self.audio_channels}")
    return np.ascontiguousarray(audio, np.float32)


@dataclasses.dataclass(frozen=True)
class ReferencedClips:
  """(record index, rng) -> the ClipPreprocessor example plus its references from another
  record of the same source video (data/references.py), or a BadRecord."""
  clips: ClipPreprocessor
  sampler: references.ReferenceSampler
  source: Any                        # the bucket's ArrayRecordDataSource
  partners: tuple[np.ndarray, ...]   # per record: records of its source outside its window

  @classmethod
  def for_bucket(cls, bucket, data_config, tokenizer, blank_size, source,
                 shards) -> "ReferencedClips":
    clips = ClipPreprocessor.for_bucket(bucket, data_config, tokenizer, blank_size)
    # Sound alone: audio references only; the unused pixel fields match the black stand-in.
    audio = bucket.kind == "audio"
    h, w = blank_size if audio else (bucket.height, bucket.width)
    sampler = references.ReferenceSampler.from_config(
        data_config, height=h, width=w, num_frames=bucket.num_frames,
        num_samples=clips.num_samples)
    if audio:
      sampler = dataclasses.replace(sampler, mix=(1.0, 0.0, 0.0))
    duration = bucket.num_frames / float(data_config.fps)
    partners = references.partner_table(references.read_sources(shards, source), duration)
    return cls(clips, sampler, source, tuple(partners))

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray] | BadRecord:
    decoded = self.clips.decoded(self.source[index])
    if isinstance(decoded, BadRecord):
      return decoded
    clip, example = decoded
    partner = None
    others = self.partners[index]
    if len(others):
      j = int(rng.choice(others))
      try:
        partner = records.decode_clip(self.source[j])
      except records.RecordError as e:   # the example still trains, without this reference
        logging.log_every_n_seconds(logging.WARNING, "Reference record %d unusable (%s); "
                                    "its partner trains without a reference", 10, j, e)
    example.update(self.sampler.sample(rng, clip, partner, self.clips.full_audio))
    return example


class ProcessBlocksMapDataset(grain.MapDataset):
  """Block `index` of every group of `count` consecutive blocks of `block` elements:
  local i -> parent[(i // block) * block * count + index * block + i % block]."""

  def __init__(self, parent: grain.MapDataset, *, block: int, index: int, count: int):
    super().__init__(parent)
    if not 0 <= index < count or block <= 0:
      raise ValueError(f"block {index} of {count} (size {block}) is not a valid share")
    self._block, self._index, self._count = block, index, count

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def _parent_index(self, i: int) -> int:
    group, offset = divmod(i, self._block)
    return (group * self._count + self._index) * self._block + offset

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    parent_indices = [self._parent_index(i) for i in indices]
    return self._parent._getitems(parent_indices)  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"ProcessBlocksMapDataset(block={self._block}, index={self._index}/{self._count})"


class _SkipBadRecordsIterDataset(grain.IterDataset):
  """Drops BadRecords; each kept example gets `bad_records`: how many it replaced."""

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipBadRecordsIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "SkipBadRecordsIterDataset"


class _SkipBadRecordsIterator(grain.DatasetIterator):

  def __next__(self) -> dict[str, np.ndarray]:
    skipped = 0
    while True:
      element = next(self._parent)
      if not isinstance(element, BadRecord):
        return dict(element, **{_BAD_KEY: np.int32(skipped)})
      skipped += 1
      if skipped >= MAX_CONSECUTIVE_BAD_RECORDS:
        raise RuntimeError(f"{skipped} bad records in a row (last: {element.reason}); "
                           "is data.path the right data set for this config?")

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _CountBadRecordsIterDataset(grain.IterDataset):
  """Removes the per-example `bad_records` field from batches and keeps a running total."""

  def __iter__(self) -> grain.DatasetIterator:
    return _CountBadRecordsIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "CountBadRecordsIterDataset"


class _CountBadRecordsIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self.bad_records = 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._parent))
    self.bad_records += int(np.sum(batch.pop(_BAD_KEY)))
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(), _BAD_KEY: self.bad_records}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    self.bad_records = int(state[_BAD_KEY])
