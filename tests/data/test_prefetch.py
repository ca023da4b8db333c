"""DevicePrefetch: batch n + 1 is placed before the loop asks for it, and the saved position
is the one before the held batch, so a restore replays it (nothing lost, nothing repeated)."""

import grain
import jax
import numpy as np
import pytest

from skyreels_jax.data.prefetch import DevicePrefetch


def numbers(n=12):
  return iter(grain.MapDataset.range(n).map(lambda i: {"x": np.full((2,), i)}).to_iter_dataset())


def test_the_next_batch_is_placed_while_this_one_is_used():
  placed = []

  def place(batch):
    placed.append(int(batch["x"][0]))
    return {"x": jax.device_put(batch["x"])}

  it = DevicePrefetch(numbers(), place)
  first = next(it)
  assert isinstance(first["x"], jax.Array) and int(first["x"][0]) == 0
  assert placed == [0, 1]          # batch 1 already on its way when batch 0 is handed out
  assert [int(next(it)["x"][0]) for _ in range(3)] == [1, 2, 3]
  assert placed == [0, 1, 2, 3, 4]


def test_the_saved_position_replays_the_held_batch():
  it = DevicePrefetch(numbers(), dict)
  for _ in range(5):
    next(it)
  state = it.get_state()                       # after 5 used, batch 5 held
  rest = [int(next(it)["x"][0]) for _ in range(4)]
  assert rest == [5, 6, 7, 8]
  fresh = DevicePrefetch(numbers(), dict)
  next(fresh)                                  # a held batch is dropped by set_state
  fresh.set_state(state)
  assert [int(next(fresh)["x"][0]) for _ in range(4)] == rest


def test_errors_reading_ahead_wait_for_their_batch():
  it = DevicePrefetch(numbers(3), dict)
  assert [int(next(it)["x"][0]) for _ in range(3)] == [0, 1, 2]   # the end read ahead: held
  with pytest.raises(StopIteration):
    next(it)
