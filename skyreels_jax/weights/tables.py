"""Strict weight import: source tensors (numpy, e.g. `safetensors.numpy.load_file`) -> NNX
params through an explicit table of `Entry` rows (no chains of string replaces).

Each model family's table is data in skyreels_jax/models/mappings/ (it names the family's
params); `load_into` is shared: it fails, naming the tensors, when a source tensor is
left unused, a param unfilled or filled twice, or a shape disagrees. No torch here.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  source: str                 # diffusers state-dict name
  target: Path                # our NNX param path
  transform: str | Callable[[np.ndarray], np.ndarray] = "identity"  # TRANSFORMS key or fn
  layer: int | None = None     # index on the stacked `layers` axis, None if not stacked


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda w: w,
    # torch Linear weight (out, in) -> nnx.Linear kernel (in, out)
    "linear_kernel": lambda w: w.T,
    # Conv3d weight (out, in, kt, kh, kw) -> kernel (in*kt*kh*kw, out), the in-patch layout
    # (C, pt, p, p) of skyreels_jax.models.layers.patchify
    "conv_kernel": lambda w: w.reshape(w.shape[0], -1).T,
}

def load_into(module, tensors: Mapping[str, np.ndarray], entries: Iterable[Entry], *,
              skip_targets: Iterable[str] = (), skip_sources: Iterable[str] = ()) -> None:
  """Fills `module`'s params from `tensors` through `entries`, in place.

  Strict: raises if a source tensor is neither used nor under `skip_sources`, if a param
  (or a layer of a stacked param) outside the `skip_targets` modules is left unfilled,
  filled twice, or if a shape disagrees. `module` may be abstract (`nnx.eval_shape`: no
  random init, e.g. a 13B model) when nothing in it is skipped.
  """
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  values, abstract = {}, set()
  for p, v in flat:
    p, v = tuple(map(str, p)), v.get_value()
    if isinstance(v, jax.ShapeDtypeStruct):  # a module from nnx.eval_shape: no random init
      abstract.add(p)
      values[p] = np.zeros(v.shape, v.dtype)
    else:
      values[p] = np.array(v)
  filled: dict[Path, set] = {p: set() for p in values}
  used = set()
  for e in entries:
    if e.source not in tensors:
      raise KeyError(f"{e.source}: not in the source tensors")
    if e.target not in values:
      raise KeyError(f"{e.source} -> {'.'.join(e.target)}: no such param")
    fn = TRANSFORMS[e.transform] if isinstance(e.transform, str) else e.transform
    val = fn(np.asarray(tensors[e.source]))
    dst = values[e.target]
    key = e.layer
    slot_shape = dst.shape if key is None else dst.shape[1:]
    if val.shape != slot_shape:
      raise ValueError(f"{e.source} -> {'.'.join(e.target)}[{key}]: shape {val.shape} "
                       f"!= {slot_shape}")
    done = filled[e.target]
    if key in done or None in done or (key is None and done):
      raise ValueError(f"{'.'.join(e.target)}[{key}] filled twice")
    if key is None:
      values[e.target] = val.astype(dst.dtype)
    else:
      dst[key] = val
    done.add(key)
    used.add(e.source)

  skip_sources, skip_targets = tuple(skip_sources), set(skip_targets)
  unused = sorted(s for s in tensors if s not in used and not s.startswith(skip_sources))
  if unused:
    raise ValueError(f"source tensors not mapped: {unused}")
  missing = []
  for p, done in filled.items():
    if None in done:
      continue
    if skip_targets.intersection(p):
      if p in abstract:
        missing.append(f"{'.'.join(p)} (abstract, no value: build it concretely)")
      continue
    if not done:
      missing.append(".".join(p))
    elif done != set(range(values[p].shape[0])):
      missing.append(f"{'.'.join(p)} layers {sorted(set(range(values[p].shape[0])) - done)}")
  if missing:
    raise ValueError(f"params not filled: {missing}")
  nnx.update(module, nnx.from_flat_state(
      [(p, jax.device_put(values[tuple(map(str, p))])) for p, _ in flat]))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a Hugging Face / diffusers folder, read with safetensors.numpy (no torch):
  the shards of `*.safetensors.index.json` when there is one; else diffusers' default file
  when present (a folder may also hold `.fp16` variants of the same tensors); else every
  `*.safetensors`. A tensor in two files is an error."""
  indexes = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
  default = os.path.join(path, "diffusion_pytorch_model.safetensors")
  if indexes:
    with open(indexes[0]) as f:
      files = [os.path.join(path, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
  elif os.path.exists(default):
    files = [default]
  else:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors in {path}")
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    part = load_file(file)
    twice = sorted(set(part) & set(tensors))
    if twice:
      raise ValueError(f"{file}: tensors already read from another file: {twice[:5]}")
    tensors.update(part)
  return tensors


def load_folder(path: str, parse_config: Callable, make: Callable, fill: Callable):
  """A module from a Hugging Face / diffusers folder: `parse_config(config.json)`, built by
  `make(cfg)` abstractly (no random init), filled strictly by `fill(module, tensors)`."""
  with open(os.path.join(path, "config.json")) as f:
    cfg = parse_config(json.load(f))
  module = nnx.eval_shape(lambda: make(cfg))
  fill(module, read_safetensors(path))
  return module


def dataclass_from_json(cls, config: Mapping) -> object:
  """`cls(**config)` with JSON lists turned back into the tuples frozen dataclasses hold."""
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
