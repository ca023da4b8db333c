"""The run's encoders from its config sections: `build_video(config.video_ae)`,
`build_audio(config.audio_ae, channels)`, `build_text(config.text, ...)`. Frozen kinds load
their converted folders through models/frozen.py; `weights=False` builds shapes only (what
config validation asks). The interfaces are in models/autoencoders and models/text.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
from flax import nnx

from skyreels_jax.core import DTYPES, ConfigError, check
from skyreels_jax.models import autoencoders, frozen, text
from skyreels_jax.models.autoencoders import identity, oobleck_vae, tiling, wan_vae
from skyreels_jax.models.mappings import qwen as qwen_table
from skyreels_jax.models.text import qwen_prompt, tiny


def _module(cfg: Any, kind: str, weights: bool, published_if_missing: bool):
  return frozen.load(kind, cfg.path, weights=weights,
                     published_if_missing=published_if_missing)


def _dtype(cfg: Any, section: str):
  """A frozen autoencoder's `dtype` field (its weights and compute)."""
  name = cfg.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"{section}.dtype: {name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def build_video(cfg: Any, *, weights: bool = True, published_if_missing: bool = False):
  """The config's video autoencoder; `weights=False`: shapes only (models/frozen.py)."""
  if cfg.kind == "identity":
    return identity.SpaceToDepthVideo(cfg.spatial_factor, cfg.temporal_factor)
  if cfg.kind == "wan":
    names = ("tile_height", "tile_width", "tile_stride_height", "tile_stride_width")
    tile_height, tile_width, stride_height, stride_width = (cfg[n] for n in names)
    # checked (at Wan 2.1's factor 8) before the checkpoint is read, so a bad field is
    # reported first; the autoencoder checks again at its checkpoint's factor
    tiling.check_tiling((tile_height, tile_width), (stride_height, stride_width),
                        wan_vae.WanVAEConfig().spatial_factor,
                        names=[f"video_ae.{n}" for n in names])
    return wan_vae.WanVideoAutoencoder(_module(cfg, "wan_vae", weights, published_if_missing),
                                       encode_chunk=cfg.encode_chunk,
                                       decode_chunk=cfg.decode_chunk,
                                       tile_size=(tile_height, tile_width),
                                       tile_stride=(stride_height, stride_width),
                                       dtype=_dtype(cfg, "video_ae"))
  raise ValueError(f"video_ae.kind={cfg.kind!r}: choose one of "
                   f"{list(autoencoders.KINDS_VIDEO)}")


def build_audio(cfg: Any, channels: int, *, weights: bool = True,
                published_if_missing: bool = False):
  """The config's audio autoencoder; `weights=False`: shapes only (models/frozen.py)."""
  if cfg.kind == "identity":
    return identity.FramedAudio(cfg.hop, channels)
  if cfg.kind == "oobleck":
    ae = oobleck_vae.OobleckAudioAutoencoder(
        _module(cfg, "oobleck_vae", weights, published_if_missing),
        dtype=_dtype(cfg, "audio_ae"))
    if ae.channels != channels:
      raise ValueError(f"audio_ae: the Oobleck VAE at {cfg.path} is {ae.channels}-channel, "
                       f"data.audio_channels is {channels}")
    return ae
  raise ValueError(f"audio_ae.kind={cfg.kind!r}: choose one of "
                   f"{list(autoencoders.KINDS_AUDIO)}")


def build_text(text_config: Any, *, dtype, param_dtype, weights: bool = True,
               published_if_missing: bool = False, max_shots: int = 0) -> text.TextEncoderSpec:
  """The run's text encoder. For frozen kinds, `weights=False` builds shapes only (and
  `published_if_missing` the published architecture when `text.path` is absent; see
  models/frozen.py); a missing path is a ValueError naming it. `max_shots` > 0: the
  tokenizer also gives each token's shot (model.shot_attention)."""
  if text_config.kind == "tiny":
    tok = tiny.HashWordTokenizer(text_config.vocab_size, text_config.max_length, max_shots)
    make = lambda rngs: tiny.TinyTextEncoder(
        text_config.vocab_size, text_config.max_length, text_config.width, rngs=rngs,
        dtype=dtype, param_dtype=param_dtype)
    return text.TextEncoderSpec(tok, make, text_config.width, trainable=True)
  if text_config.kind == "qwen2_5_vl":
    return _qwen(text_config, dtype, param_dtype, weights, published_if_missing, max_shots)
  raise ValueError(f"text.kind={text_config.kind!r}: choose one of {list(text.KINDS)}")


def _qwen(text_config, dtype, param_dtype, weights: bool, published_if_missing: bool,
          max_shots: int):
  path = text_config.path
  config = frozen.module_config("qwen2_5_vl", path, published_if_missing=published_if_missing)
  shape_only = qwen_table.build_config(config, output_layer=text_config.output_layer)

  def make(rngs: nnx.Rngs):
    del rngs    # frozen: pretrained weights, never random
    if weights:
      return frozen.load_encoder(path, output_layer=text_config.output_layer, dtype=dtype,
                                 param_dtype=param_dtype)
    return qwen_table.abstract_encoder(shape_only, dtype, param_dtype)

  folder = text.tokenizer_folder(text_config)
  tok = None
  if weights or os.path.isdir(folder):
    tok = qwen_prompt.QwenPromptTokenizer(folder, text_config.max_length, max_shots=max_shots)
  return text.TextEncoderSpec(tok, make, shape_only.hidden_size, trainable=False)


def _ae_field(section: str, kind: str, kinds, message: str = "") -> str:
  """The field an autoencoder build error is about: one the message names first
  ("video_ae.tile_width: ..."), else the kind, or a checkpoint's path."""
  named = message.split(":", 1)[0]
  if re.fullmatch(rf"{section}\.[a-z_]+", named):
    return named
  return f"{section}.path" if kind in kinds and kind != "identity" else f"{section}.kind"


def autoencoder_shapes(config, abstract: bool = False):
  """(video_ae, audio_ae) of the config, shapes only (nothing read but converted.json; with
  `abstract`, published architectures stand in for absent folders); ConfigError naming the
  video_ae.* / audio_ae.* / data.sample_rate field."""
  shapes = dict(weights=False, published_if_missing=abstract)
  try:
    vae = build_video(config.video_ae, **shapes)
  except ValueError as e:
    raise ConfigError(_ae_field("video_ae", config.video_ae.kind, autoencoders.KINDS_VIDEO,
                                str(e)), str(e)) from None
  try:
    aae = build_audio(config.audio_ae, config.data.audio_channels, **shapes)
  except ValueError as e:
    raise ConfigError(_ae_field("audio_ae", config.audio_ae.kind, autoencoders.KINDS_AUDIO,
                                str(e)), str(e)) from None
  rate = getattr(aae, "sampling_rate", None)
  check(rate is None or rate == config.data.sample_rate, "data.sample_rate",
        f"{config.data.sample_rate} Hz, but the audio autoencoder works at {rate} Hz")
  return vae, aae


def text_width(config, abstract: bool = False) -> int:
  """The text embedding width: `text.width`, which a frozen encoder's checkpoint must match."""
  t = config.text
  check(t.kind in text.KINDS, "text.kind", f"{t.kind!r} is not one of {sorted(text.KINDS)}")
  try:
    spec = build_text(t, dtype=jax.numpy.float32, param_dtype=jax.numpy.float32,
                      weights=False, published_if_missing=abstract)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError("text.path", str(e)) from None
  check(spec.width == t.width, "text.width",
        f"{t.width}, but the {t.kind} encoder at {t.path!r} gives {spec.width}-wide "
        "embeddings")
  return spec.width
