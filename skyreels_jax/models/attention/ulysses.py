"""Ulysses sequence parallelism: each device holds S/n tokens of all (local) heads; an
all-to-all over `sequence` gives it all S tokens of H/n heads, attention runs locally, and a
second all-to-all restores the sequence sharding. The local attention is `spec.sp_kernel`:
by default splash on TPU, cuDNN on GPU, blockwise (online softmax) on CPU, none of which
materialises the S x S scores. The replicated context (text) needs no
communication going in (each device slices its heads) and one all-gather of heads coming out.
"""

from __future__ import annotations

import jax
from jax import lax

from skyreels_jax.models.attention import blockwise, cudnn, dot_product, splash
from skyreels_jax.models.attention.common import join, local_kernel
from skyreels_jax.models.attention._sharded import check_heads, padded_main, shard_map_args

# The local attention over all S tokens of this device's heads (spec.sp_kernel).
KERNELS = {"blockwise": blockwise.attend_joined, "dot_product": dot_product.attend_joined,
           "splash": splash.attend_joined, "cudnn": cudnn.attend_joined}


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask, *, spec, mesh):
  axis = spec.sequence_axis
  n = mesh.shape[axis]
  heads = q.shape[2] // (mesh.shape[spec.head_axis] if spec.head_axis else 1)
  check_heads(heads, n, "ulysses")
  attend_joined = KERNELS[local_kernel(spec.sp_kernel)]
  q, k, v, kv_mask, sq = padded_main(q, k, v, kv_mask, n)
  args, in_specs, out_specs = shard_map_args(spec, q, k, v, kv_mask, q_ctx, k_ctx, v_ctx,
                                             ctx_mask)

  def local(a):
    to_heads = lambda x: lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
    hs = a["q"].shape[2] // n
    first = lax.axis_index(axis) * hs
    my_heads = lambda x: None if x is None else lax.dynamic_slice_in_dim(x, first, hs, axis=2)
    qq = join(to_heads(a["q"]), my_heads(a.get("qc")))
    kk, vv, mm = None, None, None
    if "k" in a:
      kk, vv = to_heads(a["k"]), to_heads(a["v"])
      mm = lax.all_gather(a["m"], axis, axis=1, tiled=True)
    kk, vv = join(kk, my_heads(a.get("kc"))), join(vv, my_heads(a.get("vc")))
    mm = join(mm, a.get("cm"))
    out = attend_joined(qq, kk, vv, mm)
    s_full = a["q"].shape[1] * n
    main = lax.all_to_all(out[:, :s_full], axis, split_axis=1, concat_axis=2, tiled=True)
    ctx = lax.all_gather(out[:, s_full:], axis, axis=2, tiled=True) if "qc" in a else None
    return main, ctx

  main, ctx = jax.shard_map(local, mesh=mesh, in_specs=(in_specs,), out_specs=out_specs,
                            check_vma=False)(args)
  return main[:, :sq], ctx
