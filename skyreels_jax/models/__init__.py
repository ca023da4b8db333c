"""SkyReelsV4: the text encoder (when trained with the model) and the MMDiT, as one module.
A frozen text encoder is not part of it (models/frozen.py; tasks.examples.Codecs). The
model of a config is `config.build_model(config)`: the MMDiT config is derived from every
section.
"""

from __future__ import annotations

import jax
from flax import nnx

from skyreels_jax.models import text as text_lib
from skyreels_jax.models.mmdit import MMDiT, MMDiTConfig


class SkyReelsV4(nnx.Module):

  def __init__(self, mmdit_cfg: MMDiTConfig, text_spec: text_lib.TextEncoderSpec, *,
               rngs: nnx.Rngs):
    self.text_encoder = text_spec.make_encoder(rngs) if text_spec.trainable else None
    self.mmdit = MMDiT(mmdit_cfg, rngs=rngs)

  def encode_text(self, text_ids: jax.Array, text_mask: jax.Array):
    return self.text_encoder(text_ids, text_mask)

  def __call__(self, *, text_ids=None, text_mask=None, text=None, **inputs):
    """Either `text_ids` (a trainable encoder runs here) or precomputed `text` embeddings."""
    if text is None:
      text, text_mask = self.encode_text(text_ids, text_mask)
    return self.mmdit(text=text, text_mask=text_mask, **inputs)
