"""grain input pipeline: ArrayRecord clips -> per-process batches, resumable from a checkpoint.

  source (ArrayRecord shards under data.path)
  -> seed + shuffle (data.shuffle)              one global order, the same on every process,
                                                reshuffled every epoch
  -> repeat forever
  -> this process's block of each global batch  local i -> global (i // b) * B + p * b + i % b
  -> decode + preprocess (in read threads)      bad record -> BadRecord marker, not an error
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

Batches are dicts of numpy arrays with a leading batch dim: `video` float32 (B, T, H, W, 3) in
[-1, 1], `audio` float32 (B, S, C) in [-1, 1], plus the tokenizer's fields (`text_ids` int32
(B, L), `text_mask` bool (B, L)).

Bad records (corrupt bytes, wrong schema version, clips that do not fit the config geometry)
are logged and dropped. Their running total lives in the iterator's state, so it is saved in
the checkpoint with the data position; read it with `iterator_stats(it)["bad_records"]`.
The count travels through the data rather than through a process-global counter so that it is
exact with multiprocessing workers and after a restore.
"""

import dataclasses
import glob
import os
from typing import Any, Callable

from absl import logging
import grain
import numpy as np

from skyreels_jax.data import records

# Stop instead of spinning forever when a data set holds (almost) nothing usable.
MAX_CONSECUTIVE_BAD_RECORDS = 1000
_BAD_KEY = "bad_records"


def find_shards(path: str) -> list[str]:
  """ArrayRecord shards of `data.path`: a folder (all *.array_record in it) or a glob."""
  if not path:
    raise ValueError("data.path is empty: point it at a folder of ArrayRecord shards "
                     "(python -m data_pipelines.synthetic --out=DIR writes one)")
  pattern = os.path.join(path, "*.array_record") if os.path.isdir(path) else path
  shards = sorted(glob.glob(pattern))
  if not shards:
    raise ValueError(f"data.path={path!r} holds no ArrayRecord shards (looked for {pattern})")
  return shards


def make_dataset(data_config, *, tokenizer: Callable[[str], dict[str, np.ndarray]],
                 global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """The full pipeline for this process; `iter()` of it is a resumable `grain.DatasetIterator`.

  Args:
    data_config: the config's `data` section (path, geometry, shuffle, num_workers).
    tokenizer: picklable `caption -> dict of numpy arrays` (merged into each example).
    global_batch_size: batch over all processes; each process yields `global // count`.
    seed: shuffle seed (the same on every process: all share one global order).
    process_index, process_count: which block of each global batch this process reads
      (`multihost.data_shard`; usually jax.process_index(), jax.process_count()).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"data.batch_size {global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  batch_size = global_batch_size // process_count
  if batch_size <= 0:
    raise ValueError(f"data.batch_size must be positive, got {global_batch_size}")

  source = grain.sources.ArrayRecordDataSource(find_shards(data_config.path))
  ds = grain.MapDataset.source(source)
  if len(ds) == 0:
    raise ValueError(f"data.path={data_config.path!r} holds no records")
  if data_config.shuffle:
    ds = ds.seed(seed).shuffle()
  ds = ds.repeat(None)
  if process_count > 1:
    ds = ProcessBlocksMapDataset(ds, block=batch_size, index=process_index,
                                 count=process_count)
  ds = ds.map(ClipPreprocessor.from_config(data_config, tokenizer))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2))
  it_ds = _SkipBadRecordsIterDataset(it_ds).batch(batch_size, drop_remainder=True)
  if data_config.num_workers > 0:
    # grain 0.2.18 workers read an absl flag; unparsed flags (pytest, notebooks) crash them.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return _CountBadRecordsIterDataset(it_ds)


def make_iterator(data_config, **kwargs) -> grain.DatasetIterator:
  """`iter(make_dataset(...))`: supports get_state/set_state and grain.checkpoint (orbax)."""
  return iter(make_dataset(data_config, **kwargs))


def iterator_stats(iterator: grain.DatasetIterator) -> dict[str, int]:
  """Counters of an iterator from `make_iterator`; they survive get_state/set_state."""
  if not isinstance(iterator, _CountBadRecordsIterator):
    raise TypeError(f"expected an iterator from make_iterator, got {type(iterator).__name__}")
  return {"bad_records": iterator.bad_records}


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """Stands in for a record that failed decoding or preprocessing."""
  reason: str


@dataclasses.dataclass(frozen=True)
class ClipPreprocessor:
  """Record bytes -> model example at the config geometry, or a BadRecord."""
  height: int
  width: int
  num_frames: int
  fps: float
  sample_rate: int
  audio_channels: int
  tokenizer: Callable[[str], dict[str, np.ndarray]]

  @classmethod
  def from_config(cls, data_config, tokenizer) -> "ClipPreprocessor":
    return cls(height=int(data_config.height), width=int(data_config.width),
               num_frames=int(data_config.num_frames), fps=float(data_config.fps),
               sample_rate=int(data_config.sample_rate),
               audio_channels=int(data_config.audio_channels), tokenizer=tokenizer)

  @property
  def num_samples(self) -> int:
    return int(round(self.num_frames / self.fps * self.sample_rate))

  def __call__(self, data: bytes) -> dict[str, np.ndarray] | BadRecord:
    try:
      clip = records.decode_clip(data)
      example = self.preprocess(clip)
    except records.RecordError as e:
      logging.log_every_n_seconds(logging.WARNING, "Skipping bad record: %s", 10, e)
      return BadRecord(str(e))
    text = self.tokenizer(clip["caption"])
    clash = set(text) & set(example)
    if clash:
      raise ValueError(f"tokenizer output overwrites example fields {sorted(clash)}")
    example.update(text)
    return example

  def preprocess(self, clip: dict[str, Any]) -> dict[str, np.ndarray]:
    """Crops time, checks geometry, scales to [-1, 1]; RecordError when it does not fit."""
    video, audio = clip["video"], clip["audio"]
    # Resampling and resizing are not implemented yet: such clips are bad records.
    if clip["fps"] != self.fps or clip["sample_rate"] != self.sample_rate:
      raise records.RecordError(
          f"clip is {clip['fps']} fps / {clip['sample_rate']} Hz, config wants {self.fps} fps "
          f"/ {self.sample_rate} Hz (resampling not supported)")
    if video.shape[1:3] != (self.height, self.width):
      raise records.RecordError(
          f"clip is {video.shape[1]}x{video.shape[2]}, config wants {self.height}x{self.width} "
          "(resizing not supported)")
    if video.shape[0] < self.num_frames:
      raise records.RecordError(
          f"clip has {video.shape[0]} frames, config wants {self.num_frames}")
    video = video[:self.num_frames].astype(np.float32) / 127.5 - 1.0

    n = self.num_samples
    if audio.shape[0] < n:
      short = n - audio.shape[0]
      if short >= self.sample_rate / self.fps:
        raise records.RecordError(f"audio is {short} samples short of {n}")
      audio = np.pad(audio, ((0, short), (0, 0)))
    audio = audio[:n]
    channels = audio.shape[1]
    if channels != self.audio_channels:
      if self.audio_channels == 1:
        audio = audio.mean(axis=1, keepdims=True)
      elif channels == 1:
        audio = np.repeat(audio, self.audio_channels, axis=1)
      else:
        raise records.RecordError(
            f"cannot map {channels} audio channels to {self.audio_channels}")
    return {"video": video, "audio": np.ascontiguousarray(audio, np.float32)}


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
