"""One attention entry point; each strategy is a small module registered here.

Every attention of the model has up to two kinds of tokens:
  main     the modality tokens (video or audio), which may be sharded along the `sequence`
           mesh axis (sequence parallelism);
  context  a short, replicated segment appended after main (the text tokens of the joint
           attention, or the whole K/V of the text cross-attention).
Shapes: q/k/v (B, S, H, D); masks (B, S) booleans, True = attend. `attention` returns the main
output, and the context output too when context queries are given. Strategies:

  dot_product  plain XLA (materialises scores; the reference for every strategy)
  blockwise    XLA flash attention: online softmax over blocks, custom VJP, O(S) memory
  cudnn        fused cuDNN kernel (NVIDIA GPUs)
  ulysses      all-to-all sequence <-> heads over `sequence`, local attention (sp_kernel:
               splash / cuDNN / blockwise), all-to-all back
  ring         K/V blocks rotate around `sequence` (ppermute), online softmax, custom VJP
  splash       TPU Pallas flash kernel (no S x S scores; interpret mode off TPU)
  vsa          Video Sparse Attention: top-K 3D cubes of the video grid (refiner; dense
               elsewhere); the fine stage is a block-sparse Pallas kernel on TPU
               (vsa_kernel.py, `model.vsa_kernel`)

Main lengths that do not divide the `sequence` axis are padded and masked, never truncated.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from skyreels_jax.models.attention import (blockwise, cudnn, dot_product, ring, splash,
                                           ulysses, vsa)
from skyreels_jax.models.attention.common import (  # noqa: F401 (the package's names)
    SEQUENCE_PARALLEL, SP_KERNELS, STRATEGY_NAMES, VSA_KERNELS, AttentionSpec, join, split)


def _ones_mask(x: jax.Array) -> jax.Array:
  return jnp.ones(x.shape[:2], bool)


def attention(q, k, v, kv_mask=None, *, q_ctx=None, k_ctx=None, v_ctx=None, ctx_mask=None,
              spec: AttentionSpec | str = "dot_product"):
  """Attention of [q; q_ctx] over [k; k_ctx]. k/v may be None (context-only keys)."""
  if isinstance(spec, str):
    spec = AttentionSpec(impl=spec)
  if spec.impl not in STRATEGY_NAMES:
    raise ValueError(f"attention={spec.impl!r}: choose one of {list(STRATEGY_NAMES)}")
  if spec.sp_kernel not in SP_KERNELS:
    raise ValueError(f"sp_kernel={spec.sp_kernel!r}: choose one of {list(SP_KERNELS)}")
  if spec.vsa_kernel not in VSA_KERNELS:
    raise ValueError(f"vsa_kernel={spec.vsa_kernel!r}: choose one of {list(VSA_KERNELS)}")
  if k is not None and kv_mask is None:
    kv_mask = _ones_mask(k)
  if k_ctx is not None and ctx_mask is None:
    ctx_mask = _ones_mask(k_ctx)
  fn = _strategy(spec)
  out, out_ctx = fn(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask)
  return out if q_ctx is None else (out, out_ctx)


def _strategy(spec: AttentionSpec) -> Callable:
  if spec.impl in SEQUENCE_PARALLEL:
    mesh = jax.sharding.get_abstract_mesh()
    axis = spec.sequence_axis
    if mesh.empty or axis is None or axis not in mesh.shape:
      raise ValueError(f"attention={spec.impl!r} needs a mesh with a {axis!r} axis: run "
                       "under jax.set_mesh(mesh) (the trainer and sampler do)")
    if mesh.shape[axis] == 1:
      return dot_product.local_attend   # nothing to parallelise
    module = ulysses if spec.impl == "ulysses" else ring
    return lambda *a: module.attend(*a, spec=spec, mesh=mesh)
  if spec.impl == "cudnn":
    return cudnn.attend
  if spec.impl == "blockwise":
    return blockwise.attend
  if spec.impl == "splash":
    return lambda *a: splash.attend(*a, spec=spec)
  if spec.impl == "vsa":
    return lambda *a: vsa.attend(*a, spec=spec)
  return dot_product.local_attend
