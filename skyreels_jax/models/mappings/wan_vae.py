"""diffusers `AutoencoderKLWan` (Wan 2.1) -> our `WanVAE`: the weight mapping, as data.

Each row below names a diffusers tensor (relative to its module), our param path and the
layout change; `wan_vae_entries` walks the block layout of models/autoencoders/wan_vae.py
(`encoder_blocks`, `decoder_blocks`, the same lists that build the module) and emits one
`Entry` per tensor. `load_into` (weights/tables.py) then fails, naming the tensor, on anything
missing, extra or misshapen. Checked against diffusers in tests/models/test_wan_vae.py.

No torch here: weights are read with `safetensors.numpy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import nnx

from skyreels_jax.models.autoencoders.wan_vae import (WanVAE, WanVAEConfig, decoder_blocks,
                                                      encoder_blocks)
from skyreels_jax.weights import tables
from skyreels_jax.weights.tables import Entry, Path


def conv3d_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv3d (out, in, kt, kh, kw) -> lax DHWIO (kt, kh, kw, in, out)."""
  return np.transpose(w, (2, 3, 4, 1, 0))


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d (out, in, kh, kw) -> lax HWIO (kh, kw, in, out)."""
  return np.transpose(w, (2, 3, 1, 0))


def conv1x1_kernel(w: np.ndarray) -> np.ndarray:
  """torch 1x1 Conv2d (out, in, 1, 1) -> nnx.Linear kernel (in, out)."""
  return w[:, :, 0, 0].T


def rms_gamma(w: np.ndarray) -> np.ndarray:
  """WanRMS_norm gamma, (dim, 1, 1[, 1]) broadcast over channels-first -> (dim,)."""
  return w.reshape(-1)


Rows = tuple[tuple[str, Path, Any], ...]

CAUSAL_CONV: Rows = (("weight", ("kernel",), conv3d_kernel), ("bias", ("bias",), "identity"))
RESIDUAL: Rows = (
    ("norm1.gamma", ("norm1", "gamma"), rms_gamma),
    ("conv1.weight", ("conv1", "kernel"), conv3d_kernel),
    ("conv1.bias", ("conv1", "bias"), "identity"),
    ("norm2.gamma", ("norm2", "gamma"), rms_gamma),
    ("conv2.weight", ("conv2", "kernel"), conv3d_kernel),
    ("conv2.bias", ("conv2", "bias"), "identity"),
)
SHORTCUT: Rows = (  # only where in_dim != out_dim
    ("conv_shortcut.weight", ("conv_shortcut", "kernel"), conv3d_kernel),
    ("conv_shortcut.bias", ("conv_shortcut", "bias"), "identity"),
)
ATTENTION: Rows = (
    ("norm.gamma", ("norm", "gamma"), rms_gamma),
    ("to_qkv.weight", ("to_qkv", "kernel"), conv1x1_kernel),
    ("to_qkv.bias", ("to_qkv", "bias"), "identity"),
    ("proj.weight", ("proj", "kernel"), conv1x1_kernel),
    ("proj.bias", ("proj", "bias"), "identity"),
)
RESAMPLE: Rows = (  # nn.Sequential(upsample or zero-pad, Conv2d): the conv is index 1
    ("resample.1.weight", ("spatial_conv", "kernel"), conv2d_kernel),
    ("resample.1.bias", ("spatial_conv", "bias"), "identity"),
)
TIME_CONV: Rows = (  # only the "3d" resamplers
    ("time_conv.weight", ("time_conv", "kernel"), conv3d_kernel),
    ("time_conv.bias", ("time_conv", "bias"), "identity"),
)


def _rows(src: str, dst: Path, rows: Rows) -> list[Entry]:
  return [Entry(f"{src}.{s}", dst + d, t) for s, d, t in rows]


def _residual(src: str, dst: Path, cin: int, cout: int) -> list[Entry]:
  return _rows(src, dst, RESIDUAL + (SHORTCUT if cin != cout else ()))


def _mid(src: str, dst: Path, dim: int) -> list[Entry]:
  return (_residual(f"{src}.resnets.0", dst + ("resnets", "0"), dim, dim)
          + _rows(f"{src}.attentions.0", dst + ("attentions", "0"), ATTENTION)
          + _residual(f"{src}.resnets.1", dst + ("resnets", "1"), dim, dim))


def _resample(src: str, dst: Path, mode: str) -> list[Entry]:
  return _rows(src, dst, RESAMPLE + (TIME_CONV if mode.endswith("3d") else ()))


def wan_vae_entries(cfg: WanVAEConfig) -> list[Entry]:
  """Every tensor of a diffusers Wan 2.1 VAE with this config, in state-dict order."""
  enc, dec = ("encoder",), ("decoder",)
  entries = _rows("encoder.conv_in", enc + ("conv_in",), CAUSAL_CONV)
  for i, block in enumerate(encoder_blocks(cfg)):
    src, dst = f"encoder.down_blocks.{i}", enc + ("down_blocks", str(i))
    if block[0] == "res":
      entries += _residual(src, dst, block[1], block[2])
    else:
      entries += _resample(src, dst, block[0])
  dim = cfg.base_dim * cfg.dim_mult[-1]
  entries += _mid("encoder.mid_block", enc + ("mid_block",), dim)
  entries += [Entry("encoder.norm_out.gamma", enc + ("norm_out", "gamma"), rms_gamma)]
  entries += _rows("encoder.conv_out", enc + ("conv_out",), CAUSAL_CONV)
  entries += _rows("quant_conv", ("quant_conv",), CAUSAL_CONV)
  entries += _rows("post_quant_conv", ("post_quant_conv",), CAUSAL_CONV)

  blocks = decoder_blocks(cfg)
  entries += _rows("decoder.conv_in", dec + ("conv_in",), CAUSAL_CONV)
  entries += _mid("decoder.mid_block", dec + ("mid_block",), blocks[0][0])
  for i, (cin, cout, mode) in enumerate(blocks):
    src, dst = f"decoder.up_blocks.{i}", dec + ("up_blocks", str(i))
    for j in range(cfg.num_res_blocks + 1):
      entries += _residual(f"{src}.resnets.{j}", dst + ("resnets", str(j)),
                           cin if j == 0 else cout, cout)
    if mode:
      entries += _resample(f"{src}.upsamplers.0", dst + ("upsampler",), mode)
  entries += [Entry("decoder.norm_out.gamma", dec + ("norm_out", "gamma"), rms_gamma)]
  entries += _rows("decoder.conv_out", dec + ("conv_out",), CAUSAL_CONV)
  return entries


def config_from_diffusers(config_json: Mapping[str, Any]) -> WanVAEConfig:
  """Our config from a diffusers `AutoencoderKLWan` config.json (dict). Refuses what this
  port does not implement rather than load it wrongly."""
  c = dict(config_json)
  if c.get("is_residual", False) or c.get("patch_size") is not None:
    raise ValueError("Wan 2.2 VAE (is_residual / patch_size) is not supported: Wan 2.1 only")
  if c.get("attn_scales"):
    # diffusers' own encoder calls these blocks with a cache they do not accept.
    raise ValueError(f"attn_scales={c['attn_scales']}: not supported (Wan 2.1 uses none)")
  defaults = WanVAEConfig()
  z_dim = c.get("z_dim", defaults.z_dim)
  return WanVAEConfig(
      base_dim=c.get("base_dim", defaults.base_dim),
      decoder_base_dim=c.get("decoder_base_dim"),
      z_dim=z_dim,
      dim_mult=tuple(c.get("dim_mult", defaults.dim_mult)),
      num_res_blocks=c.get("num_res_blocks", defaults.num_res_blocks),
      temporal_downsample=tuple(bool(b) for b in c.get("temperal_downsample",
                                                      defaults.temporal_downsample)),
      latents_mean=tuple(float(v) for v in c.get("latents_mean", defaults.latents_mean)),
      latents_std=tuple(float(v) for v in c.get("latents_std", defaults.latents_std)),
      in_channels=c.get("in_channels", 3),
      out_channels=c.get("out_channels", 3),
  )


def load_into_vae(vae: WanVAE, tensors: Mapping[str, np.ndarray]) -> None:
  """Fills `vae` (concrete or `nnx.eval_shape`) from a diffusers state dict, strictly."""
  tables.load_into(vae, tensors, wan_vae_entries(vae.config))


def load_diffusers_folder(path: str) -> WanVAE:
  """A `WanVAE` from a diffusers `vae/` folder (config.json + *.safetensors), float32,
  without random init (the module is built abstract and filled)."""
  return tables.load_folder(path, config_from_diffusers,
                            lambda cfg: WanVAE(cfg, rngs=nnx.Rngs(0)), load_into_vae)


# --- The interface of models/frozen.py (KINDS) and tools/convert.py.

load_folder = load_diffusers_folder


def module_config(vae: WanVAE) -> dict[str, Any]:
  return dataclasses.asdict(vae.config)


def build_module(config: Mapping[str, Any]) -> WanVAE:
  return WanVAE(tables.dataclass_from_json(WanVAEConfig, config), rngs=nnx.Rngs(0))
