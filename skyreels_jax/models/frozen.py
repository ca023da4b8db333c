"""The frozen components of a run (video VAE, audio VAE, MLLM text encoder): where their
weights come from and how they reach a jitted function.

`load(kind, path, weights=...)` gives the module of a converted folder (tools/convert.py):
  weights=True   restored weights; a missing folder is a ValueError naming it (the caller
                 turns it into a ConfigError on the config's `path` field);
  weights=False  shapes only (nnx.eval_shape, nothing read but converted.json). With
                 `published_if_missing`, a missing folder gives the published architecture
                 of the kind (Wan 2.1, Stable Audio Open's Oobleck, Qwen2.5-VL-7B), so
                 planning tools (tools/aot.py, tools/memory.py) size the real configs before
                 any weights are downloaded.

Frozen weights are never closed over by a jitted function (they would be baked into the
program as constants): each wrapper (WanVideoAutoencoder, OobleckAudioAutoencoder,
FrozenTextEncoder) holds `graphdef` + `params` and takes `params=` at call time, and
`bind(wrapper, params)` is the wrapper with traced params, used inside the train step and
the sampler, which take the params as jit arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
from flax import nnx


def published_config(kind: str) -> dict[str, Any]:
  """The module config (as converted.json stores it) of the public weights of `kind`."""
  if kind == "wan_vae":
    from skyreels_jax.models.autoencoders.wan_vae import WanVAEConfig
    return dataclasses.asdict(WanVAEConfig())
  if kind == "oobleck_vae":
    from skyreels_jax.models.autoencoders.oobleck_vae import OobleckConfig
    return dataclasses.asdict(OobleckConfig())
  if kind == "qwen2_5_vl":
    from skyreels_jax.models.text.qwen2_5_vl import Qwen25VLConfig
    return dataclasses.asdict(Qwen25VLConfig())
  raise ValueError(f"no published architecture for {kind!r}")


def module_config(kind: str, path: str, *, published_if_missing: bool = False) -> dict:
  """converted.json's module config of `path` (or the published one, see the module doc)."""
  meta = os.path.join(path, "converted.json") if path else ""
  if meta and os.path.exists(meta):
    with open(meta) as f:
      found = json.load(f)
    if found["kind"] != kind:
      raise ValueError(f"{path} holds a {found['kind']} conversion, not {kind}")
    return found["module_config"]
  if published_if_missing:
    return published_config(kind)
  what = (f"{path!r} is not a converted checkpoint (no converted.json)" if path
          else f"the {kind} weights need a path")
  raise ValueError(f"{what}: run python -m skyreels_jax.tools.convert --kind={kind} "
                   f"--src=HF_FOLDER --dst=DIR and set the path to DIR")


def load(kind: str, path: str, *, weights: bool, published_if_missing: bool = False):
  """The module (see the module doc). Nothing is cached: a 7B encoder's host copy is freed
  once its arrays are on the devices."""
  from skyreels_jax.tools import convert  # pylint: disable=g-import-not-at-top
  if weights:
    module_config(kind, path)       # the clear error for a missing folder
    return convert.restore(path, kind)
  return _abstract(kind, path, published_if_missing)


@functools.lru_cache(maxsize=16)
def _abstract(kind: str, path: str, published_if_missing: bool):
  """Shapes only, built once per folder (validation asks once per bucket)."""
  from skyreels_jax.tools import convert  # pylint: disable=g-import-not-at-top
  config = module_config(kind, path, published_if_missing=published_if_missing)
  build = convert.mapping_module(kind).build_module
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: build(config))


class _Bound:
  """A frozen wrapper whose calls use `params` (traced jit arguments)."""

  def __init__(self, inner, params):
    self._inner, self._params = inner, params

  def __getattr__(self, name):
    return getattr(self._inner, name)

  def encode(self, x):
    return self._inner.encode(x, params=self._params)

  def decode(self, z):
    return self._inner.decode(z, params=self._params)

  def __call__(self, *args, **kwargs):
    return self._inner(*args, params=self._params, **kwargs)


def params_of(component) -> Any:
  """The weights of a frozen wrapper, or None for parameter-free ones (identity codecs)."""
  return getattr(component, "params", None)


def bind(component, params):
  return component if params is None else _Bound(component, params)


def abstract_params(params):
  """ShapeDtypeStructs of a params tree (for AOT lowering and restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
