"""diffusers HunyuanVideo transformer -> our video branch: the weight mapping, as data.

Each `Entry` names one diffusers state-dict tensor, the path of the NNX param it fills and
the transform between the two layouts; `layer` indexes the stacked (scanned) `layers` axis of
a `JointLayer`. The tables are checked tensor by tensor against diffusers in
tests/models/test_hunyuan_parity.py and are what the weight converter reads.

No torch here: `load_into` takes numpy arrays (e.g. from `safetensors.numpy.load_file`).

Not mapped:
  * our V4-only layers (`text_cross`, `av_cross`): no diffusers counterpart; their output
    projections are zero-initialised, so a loaded block equals the diffusers block;
  * diffusers' text token refiner (`context_embedder.token_refiner.*` and its own
    `context_embedder.time_text_embed.*`) unless our model has one (model.text_refiner_layers,
    `refiner_entries`; the release has 2 layers);
  * `x_embedder`: our input is Concat(noisy, condition, mask) = 2C+1 channels, as
    HunyuanVideo-I2V (`image_condition_type="latent_concat"`, in_channels=33). A T2V
    checkpoint (in_channels=16) has its conv kernel zero-padded on the input channels, so the
    condition and mask start with no effect;
  * `time_text_embed.text_embedder` when the release's pooled text (CLIP, 768 wide) is not
    as wide as its text states: our pooled text is the mean of the text states.

`load_folder` / `build_module` / `module_config` are the converter's interface
(`python -m skyreels_jax.tools.convert --kind=hunyuan_video`): the folder becomes a
video-only MMDiT that `train.init_from` starts a run from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np
from flax import nnx

from skyreels_jax.models.mmdit import MMDiT, MMDiTConfig
from skyreels_jax.weights import tables
from skyreels_jax.weights.tables import TRANSFORMS, Entry, Path  # noqa: F401 (the table's types)


# Our modules with no diffusers counterpart (zero-initialised outputs).
V4_ONLY: tuple[str, ...] = ("text_cross", "av_cross")
# diffusers tensors with no counterpart here (see the module docstring).
UNMAPPED_SOURCE_PREFIXES: tuple[str, ...] = ("context_embedder.token_refiner.",
                                             "context_embedder.time_text_embed.")

# (diffusers module, our module path, kind): kind "linear" = weight+bias, "rms" = RMSNorm scale,
# "conv" = Conv3d patch embedding.
DUAL_BLOCK: tuple[tuple[str, Path, str], ...] = (
    ("norm1.linear", ("norm1", "linear"), "linear"),
    ("norm1_context.linear", ("norm1_context", "linear"), "linear"),
    ("attn.to_q", ("attn", "x_qkv", "to_q"), "linear"),
    ("attn.to_k", ("attn", "x_qkv", "to_k"), "linear"),
    ("attn.to_v", ("attn", "x_qkv", "to_v"), "linear"),
    ("attn.add_q_proj", ("attn", "ctx_qkv", "add_q"), "linear"),
    ("attn.add_k_proj", ("attn", "ctx_qkv", "add_k"), "linear"),
    ("attn.add_v_proj", ("attn", "ctx_qkv", "add_v"), "linear"),
    ("attn.norm_q", ("attn", "norm_q"), "rms"),
    ("attn.norm_k", ("attn", "norm_k"), "rms"),
    ("attn.norm_added_q", ("attn", "norm_added_q"), "rms"),
    ("attn.norm_added_k", ("attn", "norm_added_k"), "rms"),
    ("attn.to_out.0", ("attn", "to_out"), "linear"),
    ("attn.to_add_out", ("attn", "to_add_out"), "linear"),
    ("ff.net.0.proj", ("ff", "fc1"), "linear"),
    ("ff.net.2", ("ff", "fc2"), "linear"),
    ("ff_context.net.0.proj", ("ff_context", "fc1"), "linear"),
    ("ff_context.net.2", ("ff_context", "fc2"), "linear"),
)

SINGLE_BLOCK: tuple[tuple[str, Path, str], ...] = (
    ("norm.linear", ("norm", "linear"), "linear"),
    ("attn.to_q", ("qkv", "to_q"), "linear"),
    ("attn.to_k", ("qkv", "to_k"), "linear"),
    ("attn.to_v", ("qkv", "to_v"), "linear"),
    ("attn.norm_q", ("norm_q",), "rms"),
    ("attn.norm_k", ("norm_k",), "rms"),
    ("proj_mlp", ("proj_mlp",), "linear"),
    ("proj_out", ("proj_out",), "linear"),
)

# HunyuanVideoConditionEmbedding -> ConditionEmbedding (guidance_embedder only if present).
CONDITION_EMBEDDING: tuple[tuple[str, Path, str], ...] = (
    ("timestep_embedder.linear_1", ("timestep_embedder", "linear_1"), "linear"),
    ("timestep_embedder.linear_2", ("timestep_embedder", "linear_2"), "linear"),
    ("text_embedder.linear_1", ("text_embedder", "linear_1"), "linear"),
    ("text_embedder.linear_2", ("text_embedder", "linear_2"), "linear"),
)
GUIDANCE_EMBEDDING: tuple[tuple[str, Path, str], ...] = (
    ("guidance_embedder.linear_1", ("guidance_embedder", "linear_1"), "linear"),
    ("guidance_embedder.linear_2", ("guidance_embedder", "linear_2"), "linear"),
)

# HunyuanVideoIndividualTokenRefinerBlock -> token_refiner.RefinerBlock ("ln": affine LayerNorm).
REFINER_BLOCK: tuple[tuple[str, Path, str], ...] = (
    ("norm1", ("norm1",), "ln"),
    ("attn.to_q", ("to_q",), "linear"),
    ("attn.to_k", ("to_k",), "linear"),
    ("attn.to_v", ("to_v",), "linear"),
    ("attn.to_out.0", ("to_out",), "linear"),
    ("norm2", ("norm2",), "ln"),
    ("ff.net.0.proj", ("fc1",), "linear"),
    ("ff.net.2", ("fc2",), "linear"),
    ("norm_out.linear", ("norm_out",), "linear"),
)

# HunyuanVideoTransformer3DModel top level -> BranchIO (the video branch's embeddings + head).
BRANCH_IO: tuple[tuple[str, Path, str], ...] = (
    ("x_embedder.proj", ("x_embedder",), "conv"),
    ("context_embedder.proj_in", ("context_embedder",), "linear"),
    ("norm_out.linear", ("norm_out", "linear"), "linear"),
    ("proj_out", ("proj_out",), "linear"),
)


def _expand(table: Iterable[tuple[str, Path, str]], *, src_prefix: str = "",
            dst_prefix: Path = (), layer: int | None = None) -> list[Entry]:
  out = []
  for src, dst, kind in table:
    s, d = src_prefix + src, dst_prefix + dst
    if kind == "linear":
      out += [Entry(f"{s}.weight", d + ("kernel",), "linear_kernel", layer),
              Entry(f"{s}.bias", d + ("bias",), "identity", layer)]
    elif kind == "conv":
      out += [Entry(f"{s}.weight", d + ("kernel",), "conv_kernel", layer),
              Entry(f"{s}.bias", d + ("bias",), "identity", layer)]
    elif kind == "rms":
      out.append(Entry(f"{s}.weight", d + ("scale",), "identity", layer))
    elif kind == "ln":
      out += [Entry(f"{s}.weight", d + ("scale",), "identity", layer),
              Entry(f"{s}.bias", d + ("bias",), "identity", layer)]
    else:
      raise ValueError(f"unknown kind {kind!r} for {src}")
  return out


def dual_block_entries(src_prefix: str = "", dst_prefix: Path = (),
                       layer: int | None = None) -> list[Entry]:
  """HunyuanVideoTransformerBlock -> DualStreamBlock."""
  return _expand(DUAL_BLOCK, src_prefix=src_prefix, dst_prefix=dst_prefix, layer=layer)


def single_block_entries(src_prefix: str = "", dst_prefix: Path = (),
                         layer: int | None = None) -> list[Entry]:
  """HunyuanVideoSingleTransformerBlock -> SingleStreamBlock."""
  return _expand(SINGLE_BLOCK, src_prefix=src_prefix, dst_prefix=dst_prefix, layer=layer)


def condition_embedding_entries(*, guidance: bool, src_prefix: str = "",
                                dst_prefix: Path = ()) -> list[Entry]:
  """HunyuanVideoConditionEmbedding -> ConditionEmbedding."""
  table = CONDITION_EMBEDDING + (GUIDANCE_EMBEDDING if guidance else ())
  return _expand(table, src_prefix=src_prefix, dst_prefix=dst_prefix)


def branch_io_entries(*, guidance: bool, dst_prefix: Path = ()) -> list[Entry]:
  """Top-level embedders and output head of HunyuanVideoTransformer3DModel -> BranchIO."""
  return (_expand(BRANCH_IO, dst_prefix=dst_prefix)
          + condition_embedding_entries(guidance=guidance, src_prefix="time_text_embed.",
                                        dst_prefix=dst_prefix + ("time_text_embed",)))


def refiner_entries(num_layers: int, dst_prefix: Path = ("video_io", "text_refiner")
                    ) -> list[Entry]:
  """HunyuanVideoTokenRefiner's blocks and embedding (`context_embedder.*` but proj_in)."""
  out = condition_embedding_entries(guidance=False, src_prefix="context_embedder.time_text_embed.",
                                    dst_prefix=dst_prefix + ("time_text_embed",))
  for i in range(num_layers):
    out += _expand(REFINER_BLOCK, src_prefix=f"context_embedder.token_refiner.refiner_blocks.{i}.",
                   dst_prefix=dst_prefix + ("blocks", str(i)))
  return out


def video_branch_entries(num_dual: int, num_single: int, *, guidance: bool,
                         refiner_layers: int = 0) -> list[Entry]:
  """The whole HunyuanVideoTransformer3DModel -> the video branch of our MMDiT
  (`video_io`, `dual_layers.video`, `single_layers.video`, stacked on `layers`; the token
  refiner's blocks when `refiner_layers`)."""
  out = branch_io_entries(guidance=guidance, dst_prefix=("video_io",))
  if refiner_layers:
    out += refiner_entries(refiner_layers)
  for i in range(num_dual):
    out += dual_block_entries(f"transformer_blocks.{i}.", ("dual_layers", "video"), i)
  for i in range(num_single):
    out += single_block_entries(f"single_transformer_blocks.{i}.", ("single_layers", "video"), i)
  return out


def load_into(module, tensors: Mapping[str, np.ndarray], entries: Iterable[Entry], *,
              skip_targets: Iterable[str] = V4_ONLY,
              skip_sources: Iterable[str] = UNMAPPED_SOURCE_PREFIXES) -> None:
  """`tables.load_into` with HunyuanVideo's defaults: our V4-only layers and diffusers'
  token refiner are left out (see the module docstring)."""
  tables.load_into(module, tensors, entries, skip_targets=skip_targets,
                    skip_sources=skip_sources)


def module_names(num_dual: int, num_single: int) -> dict[tuple[str, ...], str]:
  """{(our Linear's path in the MMDiT..., layer index as str): diffusers module name} of the
  video branch's linear layers (LoRA export names adapters by them)."""
  out = {}
  for e in video_branch_entries(num_dual, num_single, guidance=True):
    if e.transform == "linear_kernel" and e.source.endswith(".weight"):
      key = tuple(e.target[:-1]) + (() if e.layer is None else (str(e.layer),))
      out[key] = e.source[:-len(".weight")]
  return out


# --- The interface of models/frozen.py-style kinds and tools/convert.py (kind hunyuan_video).

def module_config_from_diffusers(c: Mapping) -> dict:
  """A HunyuanVideoTransformer3DModel config.json -> our video-only MMDiT's architecture."""
  heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
  channels = int(c.get("out_channels") or c["in_channels"])
  if int(c["in_channels"]) not in (channels, 2 * channels + 1):
    raise ValueError(f"in_channels={c['in_channels']}: expected {channels} (T2V) or "
                     f"{2 * channels + 1} (Concat(noisy, condition, mask))")
  return dict(width=heads * head_dim, num_heads=heads, mlp_ratio=float(c.get("mlp_ratio", 4.0)),
              num_dual_blocks=int(c["num_layers"]), num_single_blocks=int(c["num_single_layers"]),
              video_latent_channels=channels, text_dim=int(c["text_embed_dim"]),
              patch_size=int(c["patch_size"]), patch_size_t=int(c["patch_size_t"]),
              rope_theta=float(c.get("rope_theta", 256.0)),
              rope_axes_dim=tuple(int(a) for a in c["rope_axes_dim"]),
              guidance_embed=bool(c.get("guidance_embeds", False)),
              text_refiner_layers=int(c.get("num_refiner_layers", 0)),
              pooled_text=int(c.get("pooled_projection_dim", c["text_embed_dim"])))


ARCHITECTURE = ("width", "num_heads", "mlp_ratio", "num_dual_blocks", "num_single_blocks",
                "video_latent_channels", "text_dim", "patch_size", "patch_size_t", "rope_theta",
                "rope_axes_dim", "guidance_embed", "text_refiner_layers")
# The release's CLIP-pooled text projection, when it is not as wide as the text states: left
# out (zeros in the folder); train.init_from keeps the run's own initialisation there.
POOLED_TEXT_KERNEL = "video_io/time_text_embed/text_embedder/linear_1/kernel"


def build_module(config: Mapping[str, Any]) -> MMDiT:
  """The video-only MMDiT of a converted folder (float32, no audio, no V4 cross-attention)."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
            if k in ARCHITECTURE}
  cfg = MMDiTConfig(**fields, audio_latent_channels=1, use_audio=False,
                    text_cross_attention=False)
  with nnx.use_eager_sharding(False):    # placed by the reader's logical rules
    return MMDiT(cfg, rngs=nnx.Rngs(0))


def _pad_patch_embed(channels: int):
  """The T2V patch embedding on C input channels -> 2C+1 (condition and mask zero)."""
  def pad(w: np.ndarray) -> np.ndarray:
    extra = np.zeros((w.shape[0], channels + 1, *w.shape[2:]), w.dtype)
    return tables.TRANSFORMS["conv_kernel"](np.concatenate([w, extra], axis=1))
  return pad


def load_folder(path: str):
  """A diffusers HunyuanVideoTransformer3DModel folder -> our video-only MMDiT (strict: every
  tensor mapped or named as left out)."""
  with open(os.path.join(path, "config.json")) as f:
    source = json.load(f)
  config = module_config_from_diffusers(source)
  module = nnx.eval_shape(lambda: build_module(config))
  entries = video_branch_entries(config["num_dual_blocks"], config["num_single_blocks"],
                                 guidance=config["guidance_embed"],
                                 refiner_layers=config["text_refiner_layers"])
  channels = config["video_latent_channels"]
  if int(source["in_channels"]) == channels:      # T2V: pad to Concat(noisy, cond, mask)
    entries = [dataclasses.replace(e, transform=_pad_patch_embed(channels))
               if e.source == "x_embedder.proj.weight" else e for e in entries]
  tensors = tables.read_safetensors(path)
  left_out = []
  if config["pooled_text"] != config["text_dim"]:   # CLIP-pooled: ours pools the text states
    name = "time_text_embed.text_embedder.linear_1.weight"
    tensors[name] = np.zeros((config["width"], config["text_dim"]), np.float32)
    left_out.append(POOLED_TEXT_KERNEL)
  load_into(module, tensors, entries)
  module.left_out = tuple(left_out)
  return module


def module_config(module) -> dict:
  """The architecture, and the parameters the folder holds no weights for (`left_out`)."""
  return {**{k: getattr(module.cfg, k) for k in ARCHITECTURE},
          "left_out": list(getattr(module, "left_out", []))}
