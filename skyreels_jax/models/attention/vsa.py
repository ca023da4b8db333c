"""Video Sparse Attention (VSA): each query cube attends only to its top-K key cubes.

The video tokens lie on a (T, H, W) grid (`spec.video_grid`), cut into cubes of
`spec.vsa_cube` tokens (the grid is padded to whole cubes with invalid tokens).
  coarse  q and k are mean-pooled per cube (k over valid keys only); cube-to-cube scores pick,
          per batch, head and query cube, the `spec.vsa_top_k` best key cubes. Cubes without
          a valid key score -inf, so they are never picked over a valid one.
  fine    each query cube runs dense attention over the tokens of its K cubes (static
          shapes: the K cubes are gathered) plus the always-attended "dense" keys: the
          references and the context (text).
Queries outside the grid (references, context) attend densely to every key. With K = all
cubes this is dense attention exactly (softmax does not care about key order).

Main tokens are [references; grid] when their length is prod(grid) plus a whole number of
reference frames (H * W tokens each), as MMDiT builds the video stream. Anything else runs
plain dot-product attention: no grid set, the audio stream, cross-attention (q and k of
different lengths) and context-only keys.

Not included: the paper's coarse-stage output (attention over pooled cubes added through a
learned per-token gate) - the gate is a parameter of the block, not of an attention strategy.
The gather materialises K cubes of K/V per query cube (K times the keys). `vsa_kernel.py` is
the block-sparse flash kernel that avoids it (Pallas, TPU); `spec.vsa_kernel` picks the fine
stage (auto: the kernel on TPU, this XLA reference elsewhere).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from skyreels_jax.models.attention import vsa_kernel
from skyreels_jax.models.attention._sharded import specs
from skyreels_jax.models.attention.common import join, platform
from skyreels_jax.models.attention.dot_product import attend_joined, local_attend


def reference_count(spec, q, k) -> int | None:
  """The number of leading reference tokens when [q; k] main tokens are the video stream,
  None when this attention is not over the video grid (then it runs dense)."""
  if spec is None or spec.video_grid is None or q is None or k is None:
    return None
  if q.shape[1] != k.shape[1]:
    return None
  t, h, w = spec.video_grid
  n_ref = q.shape[1] - t * h * w
  return n_ref if n_ref >= 0 and n_ref % (h * w) == 0 else None


def to_cubes(x, grid, cube, fill=0):
  """(B, prod(grid), ...) row-major grid tokens -> (B, N, C, ...) cubes of C = prod(cube)
  tokens, cube index and in-cube index both row-major; the grid is padded with `fill`."""
  b, rest = x.shape[0], x.shape[2:]
  x = x.reshape(b, *grid, *rest)
  pad = [(0, 0)] + [(0, -g % c) for g, c in zip(grid, cube)] + [(0, 0)] * len(rest)
  x = jnp.pad(x, pad, constant_values=fill)
  n = [s // c for s, c in zip(x.shape[1:4], cube)]
  x = x.reshape(b, n[0], cube[0], n[1], cube[1], n[2], cube[2], *rest)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, *range(7, 7 + len(rest)))
  return x.reshape(b, math.prod(n), math.prod(cube), *rest)


def from_cubes(x, grid, cube):
  """Inverse of `to_cubes`: (B, N, C, ...) -> (B, prod(grid), ...), grid padding dropped."""
  b, rest = x.shape[0], x.shape[3:]
  n = [-(-g // c) for g, c in zip(grid, cube)]
  x = x.reshape(b, *n, *cube, *rest).transpose(0, 1, 4, 2, 5, 3, 6, *range(7, 7 + len(rest)))
  x = x.reshape(b, *(m * c for m, c in zip(n, cube)), *rest)
  x = x[:, :grid[0], :grid[1], :grid[2]]
  return x.reshape(b, math.prod(grid), *rest)


def num_cubes(grid, cube) -> int:
  return math.prod(-(-g // c) for g, c in zip(grid, cube))


def _pooled(x, weight):
  """Mean of x (B, N, C, H, D) over the C tokens with weight (B, N, C) > 0."""
  w = weight.astype(jnp.float32)[..., None, None]
  return (x.astype(jnp.float32) * w).sum(2) / jnp.maximum(w.sum(2), 1.0)


def select_cubes(q, k, kv_mask, grid, cube, top_k: int):
  """Coarse stage: (B, H, N, K) int32 indices of each query cube's top-K key cubes.
  q/k (B, prod(grid), H, D) grid tokens only, kv_mask (B, prod(grid))."""
  real = to_cubes(jnp.ones((1, math.prod(grid)), bool), grid, cube, False)
  mc = to_cubes(kv_mask, grid, cube, False)
  q_pool = _pooled(to_cubes(q, grid, cube), jnp.broadcast_to(real, mc.shape))
  k_pool = _pooled(to_cubes(k, grid, cube), mc)
  scores = jnp.einsum("bnhd,bmhd->bhnm", q_pool, k_pool)
  scores = jnp.where(mc.any(2)[:, None, None, :], scores, -jnp.inf)
  # The selection is discrete: no gradient flows through it (as in the paper).
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), min(top_k, scores.shape[-1]))
  return idx.astype(jnp.int32)


def _gather(x, idx):
  """x (B, N, C, ...) cubes, idx (B, H, N, K) -> (B, H, N, K * C, ...) selected cubes."""
  g = jax.vmap(lambda xb, ib: xb[ib])(x, idx)           # (B, H, N, K, C, ...)
  return g.reshape(*g.shape[:3], -1, *g.shape[5:])


def _gather_heads(x, idx):
  """x (B, N, C, H, D), idx (B, H, N, K) -> (B, H, N, K * C, D), each head its own cubes."""
  xh = x.transpose(0, 3, 1, 2, 4)                         # (B, H, N, C, D)
  g = jax.vmap(jax.vmap(lambda xh_, ih: xh_[ih]))(xh, idx)  # (B, H, N, K, C, D)
  return g.reshape(*g.shape[:3], -1, g.shape[-1])


def fine_attention(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense):
  """Fine stage. qc/kc/vc (B, N, C, H, D) cubes, mc (B, N, C) key validity, idx (B, H, N, K);
  k/v_dense (B, S_d, H, D) keys every query attends to, m_dense (B, S_d).
  Returns (B, N, C, H, D). Logits and softmax in float32, as jax.nn.dot_product_attention."""
  scale = qc.shape[-1] ** -0.5
  k_sel, v_sel, m_sel = _gather_heads(kc, idx), _gather_heads(vc, idx), _gather(mc, idx)
  f32 = jnp.float32
  logits = jnp.concatenate([
      jnp.einsum("bnchd,bhnkd->bhnck", qc, k_sel, preferred_element_type=f32),
      jnp.einsum("bnchd,bshd->bhncs", qc, k_dense, preferred_element_type=f32)], -1) * scale
  mask = jnp.concatenate([m_sel, jnp.broadcast_to(m_dense[:, None, None], (*m_sel.shape[:3],
                                                                          m_dense.shape[1]))], -1)
  logits = jnp.where(mask[:, :, :, None, :], logits, -0.7 * jnp.finfo(f32).max)
  p = jax.nn.softmax(logits, -1).astype(vc.dtype)
  n_sel = k_sel.shape[3]
  return (jnp.einsum("bhnck,bhnkd->bnchd", p[..., :n_sel], v_sel)
          + jnp.einsum("bhncs,bshd->bnchd", p[..., n_sel:], v_dense))


def _check(spec):
  if len(spec.video_grid) != 3 or min(spec.video_grid) < 1:
    raise ValueError(f"attention.video_grid={spec.video_grid}: want (T, H, W) >= 1")
  if len(spec.vsa_cube) != 3 or min(spec.vsa_cube) < 1:
    raise ValueError(f"attention.vsa_cube={spec.vsa_cube}: want 3 sizes >= 1")
  if spec.vsa_top_k < 0:
    raise ValueError(f"attention.vsa_top_k={spec.vsa_top_k}: want >= 0 (0 = all cubes)")


def _fine(spec):
  """The fine stage `spec.vsa_kernel` asks for. The Pallas kernel is one call per device, so
  under a mesh it runs in shard_map over the batch and head axes (as splash does)."""
  name = spec.vsa_kernel
  if name == "auto":
    name = "pallas" if platform() == "tpu" else "xla"
  if name == "xla":
    return fine_attention
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not (spec.batch_axes or spec.head_axis):
    return vsa_kernel.fine_attention
  _, tokens, _, mask = specs(spec)           # (B, S, H, D) and (B, S), S unsharded
  b, h = tokens[0], tokens[2]
  cubes, cube_mask, idx = P(b, None, None, h, None), P(b, None, None), P(b, h, None, None)

  def fine(qc, kc, vc, mc, idx_, k_dense, v_dense, m_dense):
    dense = (tokens, tokens, mask) if k_dense is not None else (None, None, None)
    return jax.shard_map(vsa_kernel.fine_attention, mesh=mesh,
                         in_specs=(cubes, cubes, cubes, cube_mask, idx, *dense),
                         out_specs=cubes, check_vma=False)(qc, kc, vc, mc, idx_, k_dense,
                                                            v_dense, m_dense)
  return fine


def attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask, *, spec):
  n_ref = reference_count(spec, q, k)
  if n_ref is None:   # not the video grid: audio, cross-attention, text-only keys
    return local_attend(q, k, v, kv_mask, q_ctx, k_ctx, v_ctx, ctx_mask)
  _check(spec)
  grid, cube = tuple(spec.video_grid), tuple(spec.vsa_cube)
  top_k = spec.vsa_top_k or num_cubes(grid, cube)
  qg, kg, vg, mg = q[:, n_ref:], k[:, n_ref:], v[:, n_ref:], kv_mask[:, n_ref:]
  idx = select_cubes(qg, kg, mg, grid, cube, top_k)
  k_dense = join(k[:, :n_ref], k_ctx)
  v_dense, m_dense = join(v[:, :n_ref], v_ctx), join(kv_mask[:, :n_ref], ctx_mask)
  out = _fine(spec)(to_cubes(qg, grid, cube), to_cubes(kg, grid, cube),
                    to_cubes(vg, grid, cube), to_cubes(mg, grid, cube, False), idx,
                    k_dense, v_dense, m_dense)
  out = from_cubes(out, grid, cube)
  # References and context queries see every key, densely.
  q_dense = join(q[:, :n_ref], q_ctx)
  if q_dense.shape[1] == 0:
    return out, None
  dense = attend_joined(q_dense, join(k, k_ctx), join(v, v_ctx), join(kv_mask, ctx_mask))
  out = jnp.concatenate([dense[:, :n_ref], out], axis=1)
  return out, (dense[:, n_ref:] if q_ctx is not None else None)


def vsa_attention_flops(grid, cube, top_k: int, heads: int, head_dim: int,
                        context_len: int) -> tuple[int, int]:
  """(dense, sparse) attention FLOPs of one sample's [grid; context] self-attention:
  2 x the multiply-adds of QK^T and PV, as perf/flops.py counts them.
  dense   every one of S + L queries over S + L keys (S = prod(grid), L = context_len).
  sparse  fine: N * C grid queries (grid padded to whole cubes) over K * C + L keys;
          context queries over all S + L keys; coarse: N x N pooled-cube scores (QK^T only).
  """
  s, n, c = math.prod(grid), num_cubes(grid, cube), math.prod(cube)
  k = min(top_k or n, n)
  width, total = heads * head_dim, s + context_len
  dense = 4 * total * total * width
  fine = 4 * n * c * (k * c + context_len) * width
  context = 4 * context_len * total * width
  coarse = 2 * n * n * width
  return dense, fine + context + coarse
