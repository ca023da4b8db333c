"""Sweeps: a file here names its base config and returns its runs (launch/sweep.py).

  BASE = "configs/tiny.py"            # a config file, with its ":arg" if it takes one
  def sweep():
    return product({"optim.lr": [3e-4, 1e-3]}, {"optim.warmup_steps": [10, 50]})

A run is a dict of `path: value` overrides, the same as `--config.path=value` on the train
command line. The helpers combine lists of runs (big_vision's sweep style):
  grid({"a": [1, 2]}) = [{"a": 1}, {"a": 2}]         one axis
  product(x, y, ...)   every run of x merged with every run of y (dicts are grids)
  zipped(x, y, ...)    run i of x merged with run i of y (the same lengths)
  fixed(runs, **...)   every run with these values too (keys with "." as "__": optim__lr)
"""

from __future__ import annotations

import itertools


def grid(axes: dict) -> list[dict]:
  """{"path": [values], ...} -> the runs of every combination (the first key varies
  slowest)."""
  keys = list(axes)
  for k in keys:
    if isinstance(axes[k], (str, bytes)) or not hasattr(axes[k], "__iter__"):
      raise ValueError(f"sweep axis {k!r}: expected a list of values, got {axes[k]!r}")
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _runs(x) -> list[dict]:
  return grid(x) if isinstance(x, dict) else [dict(r) for r in x]


def _merge(parts: tuple[dict, ...]) -> dict:
  out = {}
  for part in parts:
    for k, v in part.items():
      if k in out and out[k] != v:
        raise ValueError(f"sweep: {k!r} is set twice ({out[k]!r} and {v!r})")
      out[k] = v
  return out


def product(*parts) -> list[dict]:
  """Every combination of the parts' runs (each a list of runs, or a dict of axes)."""
  return [_merge(combo) for combo in itertools.product(*(_runs(p) for p in parts))]


def zipped(*parts) -> list[dict]:
  """Run i of each part merged; the parts must have as many runs each."""
  runs = [_runs(p) for p in parts]
  if len({len(r) for r in runs}) > 1:
    raise ValueError(f"sweep zipped: parts of {[len(r) for r in runs]} runs differ in length")
  return [_merge(combo) for combo in zip(*runs)]


def fixed(runs, **values) -> list[dict]:
  """Every run with `values` set too (optim__lr=1e-3 sets "optim.lr")."""
  extra = {k.replace("__", "."): v for k, v in values.items()}
  return [_merge((r, extra)) for r in _runs(runs)]
