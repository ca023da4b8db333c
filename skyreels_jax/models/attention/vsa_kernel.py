"""VSA's fine stage as block-sparse flash attention: a Pallas TPU kernel (interpret mode off
TPU, which is how CPU tests check it against the XLA reference `vsa.fine_attention`).

The reference gathers the K selected key cubes of every query cube, so it holds K times the
keys. Here the selection drives the kernel's index maps instead (scalar prefetch): a query
cube's K key cubes stream through VMEM one at a time under an online softmax, and nothing
larger than (cube x cube) scores per head is ever live, forward or backward.

  forward  grid (query cube, k): out and log-sum-exp of each query over its K cubes;
  dq       the same grid, recomputing the probabilities from the log-sum-exp;
  dk, dv   the (query cube, key cube) pairs sorted by key cube, so each key cube's pairs are
           consecutive grid steps that accumulate into one output block (the "transpose" of
           the selection without materialising it). A key cube nobody selected keeps the
           running value (the outputs alias a zero-initialised input).
The always-attended dense keys (references, text) run through `blockwise` and are merged by
log-sum-exp; the backward of both parts uses the merged log-sum-exp (the flash backward).

The scalar-prefetched indices live in SMEM, which is small: each kernel call handles query
cubes in chunks of at most `SMEM_INDICES` (query cube, key cube) pairs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from skyreels_jax.models.attention import blockwise
from skyreels_jax.models.attention.common import platform

NEG = blockwise.NEG
SMEM_INDICES = 16384     # int32 pairs per kernel call (64 KiB of SMEM)
F32 = jnp.float32


def _dot(a, b, contract_a: int, contract_b: int):
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                         preferred_element_type=F32)


def _probs(q, k, valid, lse, scale):
  """exp(scores - lse) of q (C, D) over k (C, D), invalid keys 0: (C, C) float32."""
  s = _dot(q, k, 1, 1) * scale
  return jnp.exp(jnp.where(valid > 0, s, NEG) - lse) * valid


# ---------------------------------------------------------------------------- kernels


def _forward_kernel(idx_ref, q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, m_sc, l_sc,
                    acc_sc, *, scale):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG, F32)
    l_sc[...] = jnp.zeros(l_sc.shape, F32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

  valid = valid_ref[...]                                    # (1, C)
  s = jnp.where(valid > 0, _dot(q_ref[...], k_ref[...], 1, 1) * scale, NEG)
  m_prev = m_sc[...]                                        # (C, 1)
  m_new = jnp.maximum(m_prev, s.max(-1, keepdims=True))
  p = jnp.exp(s - m_new) * valid
  fix = jnp.exp(m_prev - m_new)
  l_sc[...] = l_sc[...] * fix + p.sum(-1, keepdims=True)
  acc_sc[...] = acc_sc[...] * fix + _dot(p.astype(v_ref.dtype), v_ref[...], 1, 0)
  m_sc[...] = m_new

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    total = l_sc[...]
    o_ref[...] = acc_sc[...] / jnp.maximum(total, 1e-30)
    lse_ref[...] = jnp.where(total > 0, m_sc[...] + jnp.log(jnp.maximum(total, 1e-30)), NEG)


def _dq_kernel(idx_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, valid_ref, dq_ref,
               acc_sc, *, scale):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

  k = k_ref[...]
  p = _probs(q_ref[...], k, valid_ref[...], lse_ref[...], scale)
  ds = p * (_dot(do_ref[...], v_ref[...], 1, 1) - delta_ref[...])
  acc_sc[...] += _dot(ds.astype(k.dtype), k, 1, 0) * scale

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    dq_ref[...] = acc_sc[...]


def _dkv_kernel(key_ref, query_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref,
                valid_ref, dk_in, dv_in, dk_ref, dv_ref, dk_sc, dv_sc, *, scale):
  i, last = pl.program_id(0), pl.num_programs(0) - 1
  key = key_ref[i]

  @pl.when((i == 0) | (key != key_ref[jnp.maximum(i - 1, 0)]))
  def _init():                       # first pair of this key cube: start from the running sum
    dk_sc[...] = dk_in[...]
    dv_sc[...] = dv_in[...]

  q, do = q_ref[...], do_ref[...]
  p = _probs(q, k_ref[...], valid_ref[...], lse_ref[...], scale)
  dv_sc[...] += _dot(p.astype(do.dtype), do, 0, 0)
  ds = p * (_dot(do, v_ref[...], 1, 1) - delta_ref[...])
  dk_sc[...] += _dot(ds.astype(q.dtype), q, 0, 0) * scale

  @pl.when((i == last) | (key != key_ref[jnp.minimum(i + 1, last)]))
  def _write():
    dk_ref[...] = dk_sc[...]
    dv_ref[...] = dv_sc[...]


# ------------------------------------------------------------------------ pallas calls
# Per (batch, head) arrays: q/k/v (N, C, D), valid (N, 1, C) float, lse/delta (N, C, 1),
# idx (N, K) int32. Query-cube arrays may hold one chunk of the N cubes.


def _specs(arrays, maps):
  return [pl.BlockSpec((None, *a.shape[1:]), m) for a, m in zip(arrays, maps)]


def _params(semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _forward_call(q, k, v, valid, idx, scale, interpret):
  nq, top_k = idx.shape
  c, d = q.shape[1:]
  flat = idx.reshape(-1)
  query = lambda n, j, ix: (n, 0, 0)
  key = lambda n, j, ix: (ix[n * top_k + j], 0, 0)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(nq, top_k),
      in_specs=_specs((q, k, v, valid), (query, key, key, key)),
      out_specs=[pl.BlockSpec((None, c, d), query), pl.BlockSpec((None, c, 1), query)],
      scratch_shapes=[pltpu.VMEM((c, 1), F32), pltpu.VMEM((c, 1), F32),
                      pltpu.VMEM((c, d), F32)])
  return pl.pallas_call(
      functools.partial(_forward_kernel, scale=scale), grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((nq, c, d), F32), jax.ShapeDtypeStruct((nq, c, 1), F32)],
      compiler_params=_params(("parallel", "arbitrary")), interpret=interpret,
  )(flat, q, k, v, valid)


def _dq_call(q, do, lse, delta, k, v, valid, idx, scale, interpret):
  nq, top_k = idx.shape
  query = lambda n, j, ix: (n, 0, 0)
  key = lambda n, j, ix: (ix[n * top_k + j], 0, 0)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(nq, top_k),
      in_specs=_specs((q, do, lse, delta, k, v, valid), (query,) * 4 + (key,) * 3),
      out_specs=pl.BlockSpec((None, *q.shape[1:]), query),
      scratch_shapes=[pltpu.VMEM(q.shape[1:], F32)])
  return pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale), grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, F32),
      compiler_params=_params(("parallel", "arbitrary")), interpret=interpret,
  )(idx.reshape(-1), q, do, lse, delta, k, v, valid)


def _dkv_call(q, do, lse, delta, k, v, valid, idx, dk, dv, scale, interpret):
  """dk, dv (running float32 sums) plus this chunk of query cubes' share."""
  nq, top_k = idx.shape
  keys = idx.reshape(-1)
  order = jnp.argsort(keys, stable=True)       # pairs grouped by key cube
  key_sorted, query_sorted = keys[order], (order // top_k).astype(jnp.int32)
  query = lambda i, ks, qs: (qs[i], 0, 0)
  key = lambda i, ks, qs: (ks[i], 0, 0)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(nq * top_k,),
      in_specs=_specs((q, do, lse, delta, k, v, valid, dk, dv), (query,) * 4 + (key,) * 5),
      out_specs=[pl.BlockSpec((None, *k.shape[1:]), key)] * 2,
      scratch_shapes=[pltpu.VMEM(k.shape[1:], F32)] * 2)
  return pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale), grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(k.shape, F32)] * 2,
      input_output_aliases={9: 0, 10: 1},   # dk, dv: operands 9, 10 (2 prefetch + 7 before)
      compiler_params=_params(("arbitrary",)), interpret=interpret,
  )(key_sorted, query_sorted, q, do, lse, delta, k, v, valid, dk, dv)


# --------------------------------------------------------------- per head, in chunks


def _chunk(nq: int, top_k: int) -> int:
  return max(1, min(nq, SMEM_INDICES // top_k))


def _chunked(x, size: int):
  """(N, ...) -> (ceil(N / size), size, ...), zero-padded (padded query cubes select cube 0,
  their outputs are dropped and their cotangents are 0)."""
  x = jnp.pad(x, [(0, -x.shape[0] % size)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(-1, size, *x.shape[1:])


def _unchunked(x, n: int):
  return x.reshape(-1, *x.shape[2:])[:n]


def _head_forward(q, k, v, valid, idx, scale, interpret):
  size = _chunk(*idx.shape)
  out, lse = lax.map(lambda a: _forward_call(a[0], k, v, valid, a[1], scale, interpret),
                     (_chunked(q, size), _chunked(idx, size)))
  return _unchunked(out, q.shape[0]), _unchunked(lse, q.shape[0])


def _head_backward(q, do, lse, delta, k, v, valid, idx, scale, interpret):
  size = _chunk(*idx.shape)
  chunks = tuple(_chunked(x, size) for x in (q, do, lse, delta, idx))
  dq = lax.map(lambda a: _dq_call(*a[:4], k, v, valid, a[4], scale, interpret), chunks)

  def add_chunk(acc, a):
    return tuple(_dkv_call(*a[:4], k, v, valid, a[4], *acc, scale, interpret)), None

  zeros = jnp.zeros(k.shape, F32)
  (dk, dv), _ = lax.scan(add_chunk, (zeros, zeros), chunks)
  return _unchunked(dq, q.shape[0]), dk, dv


# ------------------------------------------------------------------------ the op


def _heads_first(x):
  """(B, N, C, H, D) -> (B * H, N, C, D)."""
  b, n, c, h, d = x.shape
  return x.transpose(0, 3, 1, 2, 4).reshape(b * h, n, c, d)


def _rows(x, shape):
  """(B, H, S) log-sum-exp / delta -> (B * H, N, C, 1)."""
  b, n, c, h, _ = shape
  return x.reshape(b * h, n, c, 1)


def _sparse_inputs(qc, kc, vc, mc, idx):
  b, n, c, h, _ = qc.shape
  valid = jnp.broadcast_to(mc.astype(F32)[:, None, :, None, :], (b, h, n, 1, c))
  return (_heads_first(qc), _heads_first(kc), _heads_first(vc), valid.reshape(b * h, n, 1, c),
          idx.reshape(b * h, n, -1).astype(jnp.int32))


def _has_dense(k_dense) -> bool:
  return k_dense is not None and k_dense.shape[1] > 0


def _stats(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense):
  """(out (B, S, H, D) float32, lse (B, H, S)) of the grid queries, S = N * C."""
  b, n, c, h, d = qc.shape
  scale, interpret = d ** -0.5, platform() != "tpu"
  out, lse = lax.map(lambda a: _head_forward(*a, scale, interpret),
                     _sparse_inputs(qc, kc, vc, mc, idx))
  out = out.reshape(b, h, n * c, d).transpose(0, 2, 1, 3)
  lse = lse.reshape(b, h, n * c)
  if _has_dense(k_dense):
    dense = blockwise.stats(qc.reshape(b, n * c, h, d), k_dense, v_dense, m_dense)
    out, lse = blockwise.combine((out, lse), dense)
  return out, lse


@jax.custom_vjp
def fine_attention(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense):
  """`vsa.fine_attention` (same arguments, same result) as block-sparse flash attention."""
  out, _ = _stats(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense)
  return out.reshape(qc.shape).astype(qc.dtype)


def _fine_forward(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense):
  out, lse = _stats(qc, kc, vc, mc, idx, k_dense, v_dense, m_dense)
  res = (qc, kc, vc, mc, idx, k_dense, v_dense, m_dense, out, lse)
  return out.reshape(qc.shape).astype(qc.dtype), res


def _fine_backward(res, do):
  qc, kc, vc, mc, idx, k_dense, v_dense, m_dense, out, lse = res
  b, n, c, h, d = qc.shape
  scale, interpret = d ** -0.5, platform() != "tpu"
  do_flat = do.reshape(b, n * c, h, d)
  delta = blockwise.delta(do_flat, out)
  q, k, v, valid, ids = _sparse_inputs(qc, kc, vc, mc, idx)
  dq, dk, dv = lax.map(lambda a: _head_backward(*a, scale, interpret),
                       (q, _heads_first(do), _rows(lse, qc.shape), _rows(delta, qc.shape),
                        k, v, valid, ids))
  back = lambda x: x.reshape(b, h, n, c, d).transpose(0, 2, 3, 1, 4)
  dq, dk, dv = back(dq), back(dk), back(dv)
  dense = (None, None) if k_dense is None else (jnp.zeros_like(k_dense), jnp.zeros_like(v_dense))
  if _has_dense(k_dense):
    dq_dense, dk_dense, dv_dense = blockwise.grads(qc.reshape(b, n * c, h, d), k_dense, v_dense,
                                                   m_dense, lse, do_flat, delta)
    dq = dq + dq_dense.reshape(dq.shape)
    dense = (dk_dense.astype(k_dense.dtype), dv_dense.astype(v_dense.dtype))
  cast = lambda g, x: g.astype(x.dtype)
  return (cast(dq, qc), cast(dk, kc), cast(dv, vc), None, None, *dense, None)


fine_attention.defvjp(_fine_forward, _fine_backward)
