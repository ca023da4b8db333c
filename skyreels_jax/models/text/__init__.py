"""Text conditioning behind one interface.

A text encoder is a pair: a host-side `tokenizer(str) -> {"text_ids", "text_mask"}` (numpy,
picklable so grain workers can run it) and an nnx module `encoder(text_ids, text_mask) ->
(embeddings (B, L, width), mask (B, L))`. `trainable` says whether its params train with the
MMDiT (the tiny one) or stay frozen (the MLLM of a later issue).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from skyreels_jax.models.text import tiny


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
  tokenizer: Callable[[str], dict]
  make_encoder: Callable[[nnx.Rngs], nnx.Module]
  width: int
  trainable: bool


def build(text_config: Any, *, dtype, param_dtype) -> TextEncoderSpec:
  if text_config.kind == "tiny":
    tok = tiny.HashWordTokenizer(text_config.vocab_size, text_config.max_length)
    make = lambda rngs: tiny.TinyTextEncoder(
        text_config.vocab_size, text_config.max_length, text_config.width, rngs=rngs,
        dtype=dtype, param_dtype=param_dtype)
    return TextEncoderSpec(tok, make, text_config.width, trainable=True)
  raise ValueError(f"text.kind={text_config.kind!r}: choose one of ['tiny']")
