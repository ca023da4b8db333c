"""The tiny text encoder keeps words apart from the first step.

Its word embeddings once started at 0.02 scale, under residual branches of O(1): the
colour word's encoding in "a red circle" and "a blue circle" was 45% apart at init and 15%
after the demo's training, and the demo's model learned to ignore its captions (README
"Demo"). These tests fail if that comes back."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.models.text.tiny import HashWordTokenizer, TinyTextEncoder

RED = "<text>a red circle bounces around a dark room</text>"
BLUE = "<text>a blue circle bounces around a dark room</text>"


def _encode(texts, seed=0):
  tok = HashWordTokenizer(vocab_size=1024, max_length=16)
  with nnx.use_eager_sharding(False):
    enc = TinyTextEncoder(1024, 16, 64, rngs=nnx.Rngs(seed), dtype=jnp.float32,
                          param_dtype=jnp.float32)
  batch = tok.batch(texts)
  out, mask = enc(jnp.asarray(batch["text_ids"]), jnp.asarray(batch["text_mask"]))
  return np.asarray(out), np.asarray(mask)


def test_one_changed_word_changes_the_encoding_at_init():
  out, mask = _encode([RED, BLUE])
  diff = np.abs(out[0] - out[1]).sum(-1)       # per token
  size = np.abs(out[0]).sum(-1)
  colour = 3                                   # BOS, <text>, a, red|blue
  assert diff[colour] / size[colour] > 0.5, diff[colour] / size[colour]
  # The caption as a whole (the pooled text that drives AdaLN) moves by more than 5%.
  pooled = (out * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  rel = np.abs(pooled[0] - pooled[1]).mean() / np.abs(pooled).mean()
  assert rel > 0.05, rel


def test_the_same_word_at_another_position_stays_recognisable():
  # Position embeddings shift a word less than another word does.
  out, _ = _encode(["<text>a red circle", "<text>a dark red circle",
                    "<text>a dark blue circle"])
  same = np.abs(out[0, 3] - out[1, 4]).mean()
  other = np.abs(out[1, 4] - out[2, 4]).mean()
  assert same < other, (same, other)
