"""The tiny text encoder: hashed word tokens -> embedding + one self-attention layer.

No vocabulary file: words are hashed (crc32) into `vocab_size - 2` buckets; id 0 pads and
id 1 marks the start, so even the empty prompt (the CFG "null" condition) has one valid token.
"""

from __future__ import annotations

import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.data import shots
from skyreels_jax.models.attention import attention
from skyreels_jax.models.layers import MLP, dense, layer_norm

PAD, BOS = 0, 1
# A shot tag's times are words ("<shot start=1.25 end=2.00>": <shot, start, 1, 25, end, ...)
# so the encoder reads them; other tags are one token each.
_WORD = re.compile(r"<shot\b|<[^>]+>|[a-z0-9]+")


class HashWordTokenizer:
  """Lower-cased words and caption tags (<sfx>, </text>, ...) hashed to ids. `max_shots` > 0
  (model.shot_attention) adds each token's shot and the shots' spans (data/shots.py)."""

  def __init__(self, vocab_size: int, max_length: int, max_shots: int = 0):
    self.vocab_size, self.max_length, self.max_shots = vocab_size, max_length, max_shots

  def ids(self, text: str) -> list[int]:
    words = _WORD.findall(text.lower())
    return [BOS] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words]

  def __call__(self, text: str) -> dict[str, np.ndarray]:
    ids = self.ids(text)[: self.max_length]
    out = np.full((self.max_length,), PAD, np.int32)
    out[: len(ids)] = ids
    fields = {"text_ids": out, "text_mask": out != PAD}
    if self.max_shots:
      lower = text.lower()
      starts = np.full((self.max_length,), -1)
      found = [m.start() for m in _WORD.finditer(lower)][: self.max_length - 1]
      starts[1:1 + len(found)] = found        # token 0 is BOS
      fields.update(shots.token_shots(lower, starts, self.max_shots))
    return fields

  def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
    rows = [self(t) for t in texts]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class TinyTextEncoder(nnx.Module):

  def __init__(self, vocab_size: int, max_length: int, width: int, *, rngs: nnx.Rngs, dtype,
               param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.heads = max(1, width // 32)
    # Unit-scale word embeddings: at GPT-style 0.02 the residual branches (O(1) at init) bury
    # each token's identity (the colour word of "a red circle" / "a blue circle" encoded 15%
    # apart after the demo's training), and the model learned to ignore the caption.
    self.embed = nnx.Embed(vocab_size, width, dtype=dtype, param_dtype=param_dtype,
                           embedding_init=nnx.with_partitioning(
                               nnx.initializers.normal(1.0), ("vocab", "embed")), rngs=rngs)
    self.pos = nnx.Param(jax.random.normal(rngs.params(), (max_length, width), param_dtype)
                         * 0.1, out_sharding=(None, "embed"))
    self.qkv = dense(width, 3 * width, ("embed", "heads"), **kw)
    self.out = dense(width, width, ("heads", "embed"), **kw)
    self.mlp = MLP(width, 2 * width, **kw)

  def __call__(self, text_ids: jax.Array, text_mask: jax.Array):
    x = self.embed(text_ids) + self.pos[...][: text_ids.shape[1]].astype(self.embed.dtype)
    q, k, v = jnp.split(self.qkv(layer_norm(x)), 3, axis=-1)
    split = lambda t: t.reshape(*t.shape[:2], self.heads, -1)
    a = attention(split(q), split(k), split(v), text_mask)
    x = x + self.out(a.reshape(x.shape))
    x = x + self.mlp(layer_norm(x))
    return layer_norm(x), text_mask
