"""The frozen components of a run (video VAE, audio VAE, MLLM text encoder): where their
weights come from and how they reach a jitted function.

`load(kind, path, weights=...)` gives the module of a converted folder (written by
python -m skyreels_jax.tools.convert, read through weights/converted.py with the kind's
table in models/mappings/):
  weights=True   restored weights; a missing folder is a ValueError naming it (the caller
                 turns it into a ConfigError on the config's `path` field);
  weights=False  shapes only (nnx.eval_shape, nothing read but converted.json). With
                 `published_if_missing`, a missing folder gives the published architecture
                 of the kind (Wan 2.1, Stable Audio Open's Oobleck, Qwen2.5-VL-7B), so
                 planning tools (tools/aot.py, perf/memory.py) size the real configs before
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
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.models.autoencoders.oobleck_vae import OobleckConfig
from skyreels_jax.models.autoencoders.wan_vae import WanVAEConfig
from skyreels_jax.models.mappings import oobleck as oobleck_table
from skyreels_jax.models.mappings import qwen as qwen_table
from skyreels_jax.models.mappings import wan_vae as wan_vae_table
from skyreels_jax.models.text.qwen2_5_vl import Qwen25VLConfig
from skyreels_jax.weights import converted


# kind -> its table module (models/mappings/): load_folder(src) -> module (strict),
# module_config(module) -> JSON-able config, build_module(config) -> module.
KINDS = {"wan_vae": wan_vae_table, "oobleck_vae": oobleck_table, "qwen2_5_vl": qwen_table}
# The architectures of the public weights (Wan 2.1, Stable Audio Open's Oobleck,
# Qwen2.5-VL-7B): the config classes' defaults.
PUBLISHED = {"wan_vae": WanVAEConfig, "oobleck_vae": OobleckConfig,
             "qwen2_5_vl": Qwen25VLConfig}


def table(kind: str):
  if kind not in KINDS:
    raise converted.ConversionError(f"kind={kind!r}: choose one of {sorted(KINDS)}")
  return KINDS[kind]


def module_config(kind: str, path: str, *, published_if_missing: bool = False) -> dict:
  """converted.json's module config of `path` (or the published one, see the module doc)."""
  if published_if_missing and not (path and os.path.exists(os.path.join(path,
                                                                        converted.META))):
    table(kind)
    return dataclasses.asdict(PUBLISHED[kind]())
  return converted.read_meta(path, kind)["module_config"]


def restore(path: str, kind: str, shardings=None):
  """The module of a converted folder, its arrays placed by `shardings` (weights/converted)."""
  return converted.restore(path, kind, table(kind).build_module, shardings)


def load(kind: str, path: str, *, weights: bool, published_if_missing: bool = False):
  """The module (see the module doc). Nothing is cached: a 7B encoder's host copy is freed
  once its arrays are on the devices."""
  if weights:
    return restore(path, kind)
  return _abstract(kind, path, published_if_missing)


@functools.lru_cache(maxsize=16)
def _abstract(kind: str, path: str, published_if_missing: bool):
  """Shapes only, built once per folder (validation asks once per bucket)."""
  config = module_config(kind, path, published_if_missing=published_if_missing)
  build = table(kind).build_module
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: build(config))


def load_encoder(path: str, *, output_layer: int = -1, dtype=None, param_dtype=None):
  """The frozen Qwen2.5-VL encoder from a converted folder (converted.json + orbax params)
  or a transformers folder (config.json + safetensors), with hidden state `output_layer`
  and the given dtypes."""
  if os.path.exists(os.path.join(path, converted.META)):
    source = restore(path, "qwen2_5_vl")
  else:
    source = qwen_table.load_hf_folder(path)
  param_dtype = param_dtype or jnp.float32
  encoder = qwen_table.abstract_encoder(
      dataclasses.replace(source.config, output_layer=output_layer), dtype, param_dtype)
  nnx.update(encoder, jax.tree.map(lambda a: a.astype(param_dtype), nnx.state(source)))
  return encoder


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
