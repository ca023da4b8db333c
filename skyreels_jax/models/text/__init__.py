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
from typing import Callable

import jax
from flax import nnx

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
  return text_config.tokenizer_path or os.path.join(text_config.path, "tokenizer")
