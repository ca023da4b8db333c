"""What every strategy shares: the spec, and joining / splitting main and context tokens."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

STRATEGY_NAMES = ("dot_product", "blockwise", "cudnn", "splash", "ulysses", "ring", "vsa")
SEQUENCE_PARALLEL = ("ulysses", "ring")
# Ulysses' local attention (all S tokens, H / n heads): "auto" is splash on TPU, cuDNN on
# GPU and blockwise (online softmax, no S x S scores) elsewhere.
SP_KERNELS = ("auto", "blockwise", "dot_product", "splash", "cudnn")
# VSA's fine stage: "auto" is the block-sparse Pallas kernel on TPU and the XLA gather
# (vsa.fine_attention) elsewhere.
VSA_KERNELS = ("auto", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """The strategy and the mesh axes it may use (from the config's logical-axis rules)."""
  impl: str = "dot_product"
  batch_axes: tuple[str, ...] = ()
  sequence_axis: str | None = None
  head_axis: str | None = None
  sp_kernel: str = "auto"                          # Ulysses' local attention (SP_KERNELS)
  # Video Sparse Attention only (see vsa.py); the other strategies ignore these.
  video_grid: tuple[int, int, int] | None = None   # (T, H, W) video token grid
  vsa_cube: tuple[int, int, int] = (4, 4, 4)       # tokens per cube along (T, H, W)
  vsa_top_k: int = 0                               # key cubes per query cube; 0 = all
  vsa_kernel: str = "auto"                         # fine stage (VSA_KERNELS)


def join(main, ctx, axis: int = 1):
  """[main; ctx] along the sequence axis, either may be None."""
  parts = [x for x in (main, ctx) if x is not None]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def on_joined(attend_joined):
  """The strategy signature (main and context tokens apart) from a local kernel
  attend_joined(q, k, v, mask) over the joined [main; context] tokens."""
  def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask):
    out = attend_joined(join(q, q_ctx), join(k, k_ctx), join(v, v_ctx),
                        join(kv_mask, ctx_mask))
    return split(out, None if q is None else q.shape[1], q_ctx is not None)
  return attend


def split(x, n_main: int | None, has_ctx: bool):
  """Inverse of `join` for the query side: (main, ctx)."""
  if not has_ctx:
    return x, None
  if not n_main:
    return None, x
  return x[:, :n_main], x[:, n_main:]


def platform() -> str:
  """The platform the code is traced for: the mesh's devices (an AOT compile for a TPU
  topology traces on a CPU host), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.devices()[0].platform


def local_kernel(name: str) -> str:
  """SP_KERNELS name -> the local strategy it means on this platform."""
  if name != "auto":
    return name
  return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform(), "blockwise")
