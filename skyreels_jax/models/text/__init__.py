"""Text conditioning behind one interface.

A text encoder is a pair: a host-side `tokenizer(str) -> {"text_ids", "text_mask"}` (numpy,
picklable so grain workers can run it) and an nnx module `encoder(text_ids, text_mask) ->
(embeddings (B, L, width), mask (B, L))`. `trainable` says whether its params train with the
MMDiT (`tiny`) or stay frozen outside the train state (`qwen2_5_vl`: the MLLM of SPEC
section 2, wrapped as a `FrozenTextEncoder` whose weights ride as jit arguments).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
from flax import nnx

from skyreels_jax.models.text import tiny

KINDS = ("tiny", "qwen2_5_vl")
TRAINABLE_KINDS = ("tiny",)


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
  tokenizer: Callable[[str], dict] | None   # None: shapes only, no tokenizer folder here
  make_encoder: Callable[[nnx.Rngs], nnx.Module]
  width: int
  trainable: bool


class FrozenTextEncoder:
  """A frozen encoder split into `graphdef` + `params`; `__call__(ids, mask, params=None,
  **visual)` merges them inside the traced function (models/frozen.py). No gradient flows."""

  def __init__(self, module: nnx.Module):
    self.graphdef, self.params = nnx.split(module)

  def __call__(self, text_ids, text_mask, params=None, **visual):
    module = nnx.merge(self.graphdef, self.params if params is None else params)
    emb, mask = module(text_ids, text_mask, **visual)
    return jax.lax.stop_gradient(emb), mask


def tokenizer_folder(text_config) -> str:
  """`text.tokenizer_path`, or the `tokenizer/` folder tools/convert.py writes beside the
  weights."""
  return text_config.get("tokenizer_path", "") or os.path.join(text_config.path, "tokenizer")


def build(text_config: Any, *, dtype, param_dtype, weights: bool = True,
          published_if_missing: bool = False) -> TextEncoderSpec:
  """The run's text encoder. For frozen kinds, `weights=False` builds shapes only (and
  `published_if_missing` the published architecture when `text.path` is absent; see
  models/frozen.py); a missing path is a ValueError naming it."""
  if text_config.kind == "tiny":
    tok = tiny.HashWordTokenizer(text_config.vocab_size, text_config.max_length)
    make = lambda rngs: tiny.TinyTextEncoder(
        text_config.vocab_size, text_config.max_length, text_config.width, rngs=rngs,
        dtype=dtype, param_dtype=param_dtype)
    return TextEncoderSpec(tok, make, text_config.width, trainable=True)
  if text_config.kind == "qwen2_5_vl":
    return _qwen(text_config, dtype, param_dtype, weights, published_if_missing)
  raise ValueError(f"text.kind={text_config.kind!r}: choose one of {list(KINDS)}")


def _qwen(text_config, dtype, param_dtype, weights: bool, published_if_missing: bool):
  from skyreels_jax.models import frozen  # pylint: disable=g-import-not-at-top
  from skyreels_jax.models.text import qwen_prompt  # pylint: disable=g-import-not-at-top
  from skyreels_jax.tools import qwen_mapping  # pylint: disable=g-import-not-at-top
  path = text_config.get("path", "")
  config = frozen.module_config("qwen2_5_vl", path, published_if_missing=published_if_missing)
  shape_only = qwen_mapping.build_config(config, output_layer=text_config.get("output_layer",
                                                                             -1))

  def make(rngs: nnx.Rngs):
    del rngs    # frozen: pretrained weights, never random
    encoder = qwen_mapping.abstract_encoder(shape_only, dtype, param_dtype)
    if weights:
      source = frozen.load("qwen2_5_vl", path, weights=True)
      nnx.update(encoder, jax.tree.map(lambda a: a.astype(param_dtype), nnx.state(source)))
    return encoder

  folder = tokenizer_folder(text_config)
  tok = None
  if weights or os.path.isdir(folder):
    tok = qwen_prompt.QwenPromptTokenizer(folder, text_config.max_length)
  return TextEncoderSpec(tok, make, shape_only.hidden_size, trainable=False)
