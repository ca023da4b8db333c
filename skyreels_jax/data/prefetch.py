"""Batches onto the devices one step ahead, without moving the saved data position.

`DevicePrefetch` wraps a grain iterator: when the training loop takes batch n, batch n + 1 is
read and handed to `place` (the trainer's `jax.make_array_from_process_local_data`, an
asynchronous host -> device copy), so its transfer runs while step n computes. The loop's
`data_wait_s` is then the host read alone.

The iterator position it reports (`get_state`, what checkpoints save) is the one BEFORE the
batch it holds: a run resumed from a checkpoint reads that batch again, so no batch is lost
or repeated. Restoring a position (`set_state`) drops the held batch.
"""

from __future__ import annotations

from typing import Any, Callable

import grain


class DevicePrefetch(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, place: Callable[[dict], Any]):
    super().__init__(parent)
    self._place = place
    self._held = None       # (parent state before it, placed batch) of the next batch
    self._error = None      # raised reading ahead: raised when that batch is asked for

  @property
  def parent(self) -> grain.DatasetIterator:
    return self._parent

  def _read(self):
    state = self._parent.get_state()
    return state, self._place(next(self._parent))

  def __next__(self):
    if self._error is not None:
      error, self._error = self._error, None
      raise error
    held = self._held if self._held is not None else self._read()
    self._held = None
    try:
      self._held = self._read()
    except Exception as e:   # noqa: BLE001 (end of data, too many bad records: the next call's)
      self._error = e
    return held[1]

  def get_state(self) -> dict[str, Any]:
    return self._held[0] if self._held is not None else self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._held = self._error = None
    self._parent.set_state(state)

  def close(self) -> None:
    self._held = self._error = None
    close = getattr(self._parent, "close", None)
    if close:
      close()
