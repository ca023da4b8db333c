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
    `context_embedder.time_text_embed.*`): we have a single Linear (`context_embedder`)
    that takes `context_embedder.proj_in`. This is exact only for `num_refiner_layers=0`;
    HunyuanVideo checkpoints have 2 refiner layers, which a converter must drop (or we add
    a refiner).
  * `x_embedder`: our input is Concat(noisy, condition, mask) = 2C+1 channels, as
    HunyuanVideo-I2V (`image_condition_type="latent_concat"`, in_channels=33). A T2V
    checkpoint (in_channels=16) needs its conv kernel zero-padded on the input channels.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

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


def video_branch_entries(num_dual: int, num_single: int, *, guidance: bool) -> list[Entry]:
  """The whole HunyuanVideoTransformer3DModel -> the video branch of our MMDiT
  (`video_io`, `dual_layers.video`, `single_layers.video`, stacked on `layers`)."""
  out = branch_io_entries(guidance=guidance, dst_prefix=("video_io",))
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
