"""diffusers `AutoencoderOobleck` (Stable Audio Open's VAE) -> our `OobleckVAE`: the weight
mapping, as data.

Our param paths mirror diffusers' module names (`encoder.block.0.res_unit1.conv1`, ...), so
each row below only says which tensor of a conv or Snake goes where and how its layout
changes; `oobleck_entries` walks the block layout of models/autoencoders/oobleck_vae.py (the
same `encoder_dims` / `decoder_dims` that build the module) and emits one `Entry` per tensor.

Weight norm is folded first (`fold_weight_norm`): every `X.weight_g` + `X.weight_v` pair (the
names `state_dict()` gives under torch 2.13 with diffusers' `torch.nn.utils.weight_norm`, and
those of the published checkpoint), or `X.parametrizations.weight.original0` / `original1`
(torch's newer parametrisation), becomes one `X.weight` = g * v / |v|, the norm taken over
all axes but the first, as torch does. The table then names these folded `X.weight` tensors.
Exact for inference (the VAE is frozen here). `load_into` (weights/tables.py) then fails,
naming the tensor, on anything missing, extra or misshapen; a lone g or v fails in the fold.

No torch here: weights are read with `safetensors.numpy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import nnx

from skyreels_jax.models.autoencoders.oobleck_vae import (OobleckConfig, OobleckVAE,
                                                          decoder_dims, encoder_dims)
from skyreels_jax.weights import tables
from skyreels_jax.weights.tables import Entry, Path

# (suffix of the magnitude g, suffix of the direction v) of each weight-norm naming.
WEIGHT_NORM_NAMES = (("weight_g", "weight_v"),
                     ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def fold_weight_norm(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A copy of `tensors` with every weight-norm pair replaced by its plain `X.weight`
  (computed in float64, stored in v's dtype, or float32 for half-precision files)."""
  out = dict(tensors)
  for g_suffix, v_suffix in WEIGHT_NORM_NAMES:
    for name in [n for n in tensors if n.endswith("." + g_suffix) or
                 n.endswith("." + v_suffix)]:
      is_g = name.endswith("." + g_suffix)
      prefix = name[:-len(g_suffix if is_g else v_suffix)]
      g_name, v_name = prefix + g_suffix, prefix + v_suffix
      if g_name not in tensors or v_name not in tensors:
        lone, other = (g_name, v_name) if is_g else (v_name, g_name)
        raise KeyError(f"{lone}: weight-norm tensor without its pair {other}")
      if not is_g:
        continue   # each pair is folded once, when its g is met
      if prefix + "weight" in tensors:
        raise ValueError(f"{prefix}weight given both plain and weight-normalised")
      g, v = np.asarray(tensors[g_name]), np.asarray(tensors[v_name])
      v64 = v.astype(np.float64)
      norm = np.sqrt(np.sum(np.square(v64), axis=tuple(range(1, v.ndim)), keepdims=True))
      dtype = v.dtype if v.dtype in (np.float32, np.float64) else np.float32
      out[prefix + "weight"] = (g.astype(np.float64) * v64 / norm).astype(dtype)
      del out[g_name], out[v_name]
  return out


def conv1d_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv1d (out, in, k) -> lax WIO (k, in, out)."""
  return np.transpose(w, (2, 1, 0))


def conv_transpose1d_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose1d (in, out, k) -> (k, in, out), unflipped (the module flips it)."""
  return np.transpose(w, (2, 0, 1))


def snake_param(w: np.ndarray) -> np.ndarray:
  """Snake1d alpha / beta, (1, dim, 1) broadcast over channels-first -> (dim,)."""
  return w.reshape(-1)


Rows = tuple[tuple[str, Path, Any], ...]

CONV: Rows = (("weight", ("kernel",), conv1d_kernel), ("bias", ("bias",), "identity"))
CONV_NO_BIAS: Rows = CONV[:1]
CONV_T: Rows = (("weight", ("kernel",), conv_transpose1d_kernel),
                ("bias", ("bias",), "identity"))
SNAKE: Rows = (("alpha", ("alpha",), snake_param), ("beta", ("beta",), snake_param))


def _rows(src: str, dst: Path, rows: Rows) -> list[Entry]:
  return [Entry(f"{src}.{s}", dst + d, t) for s, d, t in rows]


def _layer(src: str, dst: Path, name: str, rows: Rows) -> list[Entry]:
  return _rows(f"{src}.{name}", dst + (name,), rows)


def _residual_unit(src: str, dst: Path) -> list[Entry]:
  return (_layer(src, dst, "snake1", SNAKE) + _layer(src, dst, "conv1", CONV)
          + _layer(src, dst, "snake2", SNAKE) + _layer(src, dst, "conv2", CONV))


def _residual_units(src: str, dst: Path) -> list[Entry]:
  return [e for i in (1, 2, 3)
          for e in _residual_unit(f"{src}.res_unit{i}", dst + (f"res_unit{i}",))]


def oobleck_entries(cfg: OobleckConfig) -> list[Entry]:
  """Every (weight-norm folded) tensor of a diffusers Oobleck VAE with this config, in
  state-dict order."""
  entries: list[Entry] = []
  for part, dims in (("encoder", encoder_dims(cfg)), ("decoder", decoder_dims(cfg))):
    entries += _layer(part, (part,), "conv1", CONV)
    for i in range(len(dims)):
      src, dst = f"{part}.block.{i}", (part, "block", str(i))
      if part == "encoder":
        entries += (_residual_units(src, dst) + _layer(src, dst, "snake1", SNAKE)
                    + _layer(src, dst, "conv1", CONV))
      else:
        entries += (_layer(src, dst, "snake1", SNAKE) + _layer(src, dst, "conv_t1", CONV_T)
                    + _residual_units(src, dst))
    entries += _layer(part, (part,), "snake1", SNAKE)
    entries += _layer(part, (part,), "conv2", CONV if part == "encoder" else CONV_NO_BIAS)
  return entries


def config_from_diffusers(config_json: Mapping[str, Any]) -> OobleckConfig:
  """Our config from a diffusers `AutoencoderOobleck` config.json (dict); diffusers' own
  defaults fill absent fields. `OobleckConfig` refuses layouts this port cannot run."""
  c, d = dict(config_json), OobleckConfig()
  return OobleckConfig(
      encoder_hidden_size=int(c.get("encoder_hidden_size", d.encoder_hidden_size)),
      downsampling_ratios=tuple(int(r) for r in c.get("downsampling_ratios",
                                                      d.downsampling_ratios)),
      channel_multiples=tuple(int(m) for m in c.get("channel_multiples", d.channel_multiples)),
      decoder_channels=int(c.get("decoder_channels", d.decoder_channels)),
      decoder_input_channels=int(c.get("decoder_input_channels", d.decoder_input_channels)),
      audio_channels=int(c.get("audio_channels", d.audio_channels)),
      sampling_rate=int(c.get("sampling_rate", d.sampling_rate)),
  )


def load_into_vae(vae: OobleckVAE, tensors: Mapping[str, np.ndarray]) -> None:
  """Fills `vae` (concrete or `nnx.eval_shape`) from a diffusers state dict, strictly."""
  tables.load_into(vae, fold_weight_norm(tensors), oobleck_entries(vae.config))


def load_diffusers_folder(path: str) -> OobleckVAE:
  """An `OobleckVAE` from a diffusers `vae/` folder (config.json + *.safetensors), float32,
  without random init (the module is built abstract and filled). Wrap it in
  `OobleckAudioAutoencoder` for the audio-autoencoder interface."""
  return tables.load_folder(path, config_from_diffusers,
                            lambda cfg: OobleckVAE(cfg, rngs=nnx.Rngs(0)), load_into_vae)


# --- The interface of models/frozen.py (KINDS) and tools/convert.py.

load_folder = load_diffusers_folder


def module_config(vae: OobleckVAE) -> dict[str, Any]:
  return dataclasses.asdict(vae.config)


def build_module(config: Mapping[str, Any]) -> OobleckVAE:
  return OobleckVAE(tables.dataclass_from_json(OobleckConfig, config), rngs=nnx.Rngs(0))
