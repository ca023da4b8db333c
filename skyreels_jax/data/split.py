"""The held-out split of a data set (data.eval_fraction): a deterministic hash of each
record's source VIDEO (the `path` of `path@start`), so every clip of one video falls on
one side and validation never sees a scene it trained on. The same records are held out
on every process, mesh and restart; a record without a source is split by its position."""

from __future__ import annotations

import hashlib

import numpy as np


def source_key(source: str | None, index: int) -> str:
  if not source:
    return f"#{index}"
  return source.rsplit("@", 1)[0]


def held_out(key: str, fraction: float) -> bool:
  """Whether the records of `key` are held out: the first 8 hex digits of its SHA-1 as a
  number in [0, 1) fall below `fraction`."""
  return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2.0**32 < fraction


def indices(sources: list[str | None], fraction: float, *, eval_side: bool) -> np.ndarray:
  """Record indices of the training side (eval_side False) or the held-out side."""
  out = [i for i, s in enumerate(sources)
         if held_out(source_key(s, i), fraction) == eval_side]
  return np.asarray(out, np.int64)
