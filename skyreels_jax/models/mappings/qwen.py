"""transformers `Qwen2_5_VLForConditionalGeneration` -> our `Qwen25VLEncoder`: the weight
mapping, as data.

The rows below name a Hugging Face tensor (relative to its module), our param path and the
layout change; `qwen_entries` emits one `Entry` per tensor and decoder / vision layer (our
layers are stacked on a leading axis). Two source layouts exist and both are tables, not
string rewrites: the hub checkpoints and transformers' `save_pretrained` write
`model.layers.*` / `visual.*`; transformers' in-memory module tree is
`model.language_model.layers.*` / `model.visual.*`. `load_into` (weights/tables.py) fails,
naming the tensor, on anything missing, extra or misshapen.

`lm_head.weight` is deliberately unused (an encoder has no vocabulary head): it is the one
`skip_sources` entry, plus `visual.*` when the encoder is built text-only (`vision=None`).
No torch here: weights are read with `safetensors.numpy`. Checked against transformers in
tests/models/test_qwen2_5_vl.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np
from flax import nnx
import jax.numpy as jnp

from skyreels_jax.models.text.qwen2_5_vl import Qwen25VLConfig, Qwen25VLEncoder
from skyreels_jax.models.text.qwen2_5_vl_vision import Qwen25VisionConfig
from skyreels_jax.weights import tables
from skyreels_jax.weights.tables import Entry, Path

Rows = tuple[tuple[str, Path, Any], ...]

DECODER_LAYER: Rows = (
    ("input_layernorm.weight", ("input_layernorm", "scale"), "identity"),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), "identity"),
    ("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), "linear_kernel"),
    ("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), "identity"),
    ("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), "linear_kernel"),
    ("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), "identity"),
    ("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), "linear_kernel"),
    ("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), "identity"),
    ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), "linear_kernel"),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "linear_kernel"),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "linear_kernel"),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "linear_kernel"),
)
VISION_BLOCK: Rows = (
    ("norm1.weight", ("norm1", "scale"), "identity"),
    ("norm2.weight", ("norm2", "scale"), "identity"),
    ("attn.qkv.weight", ("attn", "qkv", "kernel"), "linear_kernel"),
    ("attn.qkv.bias", ("attn", "qkv", "bias"), "identity"),
    ("attn.proj.weight", ("attn", "proj", "kernel"), "linear_kernel"),
    ("attn.proj.bias", ("attn", "proj", "bias"), "identity"),
) + tuple((f"mlp.{n}.{w}", ("mlp", n, p), t) for n in ("gate_proj", "up_proj", "down_proj")
          for w, p, t in (("weight", "kernel", "linear_kernel"), ("bias", "bias", "identity")))
VISION_TOP: Rows = (
    ("patch_embed.proj.weight", ("patch_embed", "kernel"), "conv_kernel"),
    ("merger.ln_q.weight", ("merger", "ln_q", "scale"), "identity"),
    ("merger.mlp.0.weight", ("merger", "mlp_0", "kernel"), "linear_kernel"),
    ("merger.mlp.0.bias", ("merger", "mlp_0", "bias"), "identity"),
    ("merger.mlp.2.weight", ("merger", "mlp_2", "kernel"), "linear_kernel"),
    ("merger.mlp.2.bias", ("merger", "mlp_2", "bias"), "identity"),
)
# (language model prefix, vision prefix) of each source layout.
LAYOUTS = {"checkpoint": ("model.", "visual."),
           "module": ("model.language_model.", "model.visual.")}
UNUSED_SOURCES = ("lm_head.",)


def source_layout(tensors: Mapping[str, Any]) -> str:
  for name, (text, _) in LAYOUTS.items():
    if f"{text}embed_tokens.weight" in tensors:
      return name
  raise KeyError("no model.embed_tokens.weight nor model.language_model.embed_tokens.weight: "
                 "not a Qwen2.5-VL state dict")


def qwen_entries(cfg: Qwen25VLConfig, layout: str = "checkpoint") -> list[Entry]:
  """Every encoder tensor of a Qwen2.5-VL state dict with this config."""
  text, vision = LAYOUTS[layout]
  entries = [Entry(f"{text}embed_tokens.weight", ("embed_tokens", "embedding")),
             Entry(f"{text}norm.weight", ("norm", "scale"))]
  for i in range(cfg.num_layers):
    entries += [Entry(f"{text}layers.{i}.{s}", ("layers",) + d, t, layer=i)
                for s, d, t in DECODER_LAYER]
  if cfg.vision is not None:
    entries += [Entry(f"{vision}{s}", ("visual",) + d, t) for s, d, t in VISION_TOP]
    for i in range(cfg.vision.depth):
      entries += [Entry(f"{vision}blocks.{i}.{s}", ("visual", "blocks") + d, t, layer=i)
                  for s, d, t in VISION_BLOCK]
  return entries


def _text_fields(c: Mapping[str, Any]) -> dict[str, Any]:
  """The text config: nested `text_config` (transformers >= 4.5x) or top level (hub files)."""
  t = dict(c.get("text_config") or c)
  if t.get("use_sliding_window"):
    raise ValueError("use_sliding_window=True: sliding-window attention is not implemented")
  act = t.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"text hidden_act={act!r}: only silu is implemented")
  rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or c.get("rope_scaling") or {})
  if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
    raise ValueError(f"rope_parameters={rope}: only default (m)rope is implemented")
  return dict(
      vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
      intermediate_size=t["intermediate_size"], num_layers=t["num_hidden_layers"],
      num_heads=t["num_attention_heads"],
      num_kv_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
      rms_norm_eps=t.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1000000.0))),
      mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))))


def _vision_config(v: Mapping[str, Any]) -> Qwen25VisionConfig:
  if v.get("hidden_act", "silu") != "silu":
    raise ValueError(f"vision hidden_act={v['hidden_act']!r}: only silu is implemented")
  d = Qwen25VisionConfig()
  rope = v.get("rope_parameters") or {}
  return Qwen25VisionConfig(
      depth=v.get("depth", d.depth), hidden_size=v.get("hidden_size", d.hidden_size),
      intermediate_size=v.get("intermediate_size", d.intermediate_size),
      num_heads=v.get("num_heads", d.num_heads), in_channels=v.get("in_channels", 3),
      patch_size=v.get("patch_size", d.patch_size),
      temporal_patch_size=v.get("temporal_patch_size", d.temporal_patch_size),
      spatial_merge_size=v.get("spatial_merge_size", d.spatial_merge_size),
      window_size=v.get("window_size", d.window_size),
      out_hidden_size=v.get("out_hidden_size", d.out_hidden_size),
      fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", d.fullatt_block_indexes)),
      rope_theta=float(rope.get("rope_theta", d.rope_theta)))


def config_from_hf(config_json: Mapping[str, Any], *, output_layer: int = -1,
                   with_vision: bool = True) -> Qwen25VLConfig:
  """Our config from a transformers Qwen2.5-VL config.json (dict). Refuses what this port
  does not implement (sliding windows, other activations or rope types) rather than load it
  wrongly."""
  c = dict(config_json)
  if c.get("model_type", "qwen2_5_vl") != "qwen2_5_vl":
    raise ValueError(f"model_type={c.get('model_type')!r}: a qwen2_5_vl config is expected")
  d = Qwen25VLConfig()
  vision = _vision_config(c.get("vision_config") or {}) if with_vision else None
  return Qwen25VLConfig(
      **_text_fields(c), vision=vision, output_layer=output_layer,
      image_token_id=c.get("image_token_id", d.image_token_id),
      video_token_id=c.get("video_token_id", d.video_token_id),
      vision_start_token_id=c.get("vision_start_token_id", d.vision_start_token_id),
      tokens_per_second=(c.get("vision_config") or {}).get("tokens_per_second",
                                                           d.tokens_per_second))


def abstract_encoder(cfg: Qwen25VLConfig, dtype=None, param_dtype=None) -> Qwen25VLEncoder:
  """Shapes and logical axes only (no memory, no random init), ready for `load_into_encoder`.
  Eager sharding is off: params are placed later, by the caller's logical rules."""

  kw = dict(dtype=dtype or jnp.float32, param_dtype=param_dtype or jnp.float32)
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Qwen25VLEncoder(cfg, rngs=nnx.Rngs(0), **kw))


def load_into_encoder(encoder: Qwen25VLEncoder, tensors: Mapping[str, np.ndarray]) -> None:
  """Fills `encoder` (concrete or `nnx.eval_shape`) from a Qwen2.5-VL state dict, strictly."""
  layout = source_layout(tensors)
  skip = UNUSED_SOURCES + ((LAYOUTS[layout][1],) if encoder.config.vision is None else ())
  tables.load_into(encoder, tensors, qwen_entries(encoder.config, layout), skip_sources=skip)


read_safetensors = tables.read_safetensors


def load_hf_folder(path: str, *, output_layer: int = -1, with_vision: bool = True,
                   dtype=None, param_dtype=None) -> Qwen25VLEncoder:
  """A `Qwen25VLEncoder` from a transformers folder (config.json + safetensors), without
  random init (the module is built abstract and filled). Params keep float32 by default."""
  with open(os.path.join(path, "config.json")) as f:
    cfg = config_from_hf(json.load(f), output_layer=output_layer, with_vision=with_vision)
  encoder = abstract_encoder(cfg, dtype, param_dtype)
  load_into_encoder(encoder, read_safetensors(path))
  return encoder


# --- The interface of models/frozen.py (KINDS) and tools/convert.py.

load_folder = load_hf_folder


def module_config(encoder: Qwen25VLEncoder) -> dict[str, Any]:
  return dataclasses.asdict(encoder.config)


def build_config(config: Mapping[str, Any], **overrides) -> Qwen25VLConfig:
  """converted.json's module config (JSON values) -> Qwen25VLConfig, with `overrides`."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
  vision = fields.pop("vision", None)
  if vision is not None:
    vision = Qwen25VisionConfig(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in vision.items()})
  return Qwen25VLConfig(**{**fields, **overrides}, vision=vision)


def build_module(config: Mapping[str, Any]) -> Qwen25VLEncoder:
  with nnx.use_eager_sharding(False):
    return Qwen25VLEncoder(build_config(config), rngs=nnx.Rngs(0))
