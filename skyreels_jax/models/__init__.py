"""SkyReelsV4: the text encoder (when trained with the model) and the MMDiT, as one module.
A frozen text encoder is not part of it (models/frozen.py; tasks.examples.Codecs).
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


def build_model(config, *, rngs: nnx.Rngs) -> SkyReelsV4:
  """Concrete model (no eager sharding: the trainer places params by logical rules)."""
  from skyreels_jax.config import DTYPES, derive
  _, mcfg = derive(config, abstract=True)    # shapes only: the run validated its paths
  spec = text_lib.build(config.text, dtype=DTYPES[config.model.dtype],
                        param_dtype=DTYPES[config.model.param_dtype], weights=False,
                        published_if_missing=True)
  with nnx.use_eager_sharding(False):
    return SkyReelsV4(mcfg, spec, rngs=rngs)


def abstract_model(config) -> SkyReelsV4:
  """Shapes and logical axes only (nnx.eval_shape): no memory, any size."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
