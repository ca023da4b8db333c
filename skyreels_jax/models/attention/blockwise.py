"""Blockwise (flash) attention in plain XLA: an online softmax over key blocks, queries in
blocks too, and a custom VJP that recomputes the scores block by block. No buffer larger than
(query block x key block) per head is ever live, forward or backward, so memory is O(S).

It runs anywhere: the CPU kernel of the sequence-parallel strategies, `attention=blockwise`
where no fused kernel exists, and the building block of ring attention, which needs the
partial results (`stats`, `combine`) and the per-block gradients (`grads`) of any key subset.

Accumulation is float32. A query whose keys are all masked gets output 0 and log-sum-exp
`NEG` (finite, so combining partial results never makes a NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from skyreels_jax.models.attention.common import on_joined
from skyreels_jax.models.attention._sharded import pad_to

NEG = -1e30
BLOCK = 512   # query and key block (a whole sequence when shorter)


def _blocks(x, size):
  """(B, S, ...) padded to a multiple of `size` -> (S / size, B, size, ...)."""
  x = pad_to(x, size, False if x.dtype == jnp.bool_ else 0)
  return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)


def _unblock(x, length):
  """Inverse of `_blocks`, cropped to `length`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _scores(q, k, mask, scale):
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k.astype(jnp.float32)) * scale
  return jnp.where(mask[:, None, None, :], s, NEG)


def stats(q, k, v, mask, block: int | None = None):
  """Attention of q (B, Sq, H, D) over k/v (B, Sk, H, D) with key mask (B, Sk):
  (out (B, Sq, H, D) float32, lse (B, H, Sq) float32)."""
  sq, scale = q.shape[1], q.shape[-1] ** -0.5
  block = block or BLOCK
  bq, bk = min(block, sq), min(block, k.shape[1])
  kb, vb, mb = _blocks(k, bk), _blocks(v, bk), _blocks(mask, bk)

  def one_query_block(qb):
    qb = qb.astype(jnp.float32)
    b, n, h, d = qb.shape

    def fold(carry, blk):
      out, total, top = carry
      s = _scores(qb, blk[0], blk[2], scale)
      new_top = jnp.maximum(top, s.max(-1))
      p = jnp.exp(s - new_top[..., None]) * blk[2][:, None, None, :]
      fix = jnp.exp(top - new_top)
      total = total * fix + p.sum(-1)
      out = out * fix.transpose(0, 2, 1)[..., None] + jnp.einsum(
          "bhqk,bkhd->bqhd", p, blk[1].astype(jnp.float32))
      return (out, total, new_top), None

    init = (jnp.zeros((b, n, h, d), jnp.float32), jnp.zeros((b, h, n), jnp.float32),
            jnp.full((b, h, n), NEG, jnp.float32))
    (out, total, top), _ = lax.scan(fold, init, (kb, vb, mb))
    out = out / jnp.maximum(total, 1e-30).transpose(0, 2, 1)[..., None]
    return out, jnp.where(total > 0, top + jnp.log(jnp.maximum(total, 1e-30)), NEG)

  out, lse = lax.map(one_query_block, _blocks(q, bq))
  lse = jnp.moveaxis(lse, 0, 2).reshape(q.shape[0], q.shape[2], -1)[..., :sq]
  return _unblock(out, sq), lse


def combine(a, b):
  """Two partial results (out, lse) over disjoint key sets -> the result over both."""
  lse = jnp.logaddexp(a[1], b[1])
  weight = lambda l: jnp.exp(l - lse).transpose(0, 2, 1)[..., None]
  return a[0] * weight(a[1]) + b[0] * weight(b[1]), lse


def grads(q, k, v, mask, lse, do, delta, block: int | None = None):
  """Gradients through the keys k/v (any subset of all keys) given the final lse (B, H, Sq),
  the output cotangent do (B, Sq, H, D) and delta = sum(do * out, -1) (B, H, Sq): float32
  (dq, dk, dv), dq being this subset's share."""
  sq, sk, scale = q.shape[1], k.shape[1], q.shape[-1] ** -0.5
  block = block or BLOCK
  bq, bk = min(block, sq), min(block, sk)
  kb, vb, mb = _blocks(k, bk), _blocks(v, bk), _blocks(mask, bk)
  rows = lambda x: _blocks(jnp.moveaxis(x, 2, 1), bq)      # (B, H, Sq) -> (n, B, bq, H)
  qs = (_blocks(q, bq), _blocks(do, bq), rows(lse), rows(delta))

  def one_query_block(acc, blk_q):
    qb, dob, lb, db = (x.astype(jnp.float32) for x in blk_q)
    lb, db = lb.transpose(0, 2, 1), db.transpose(0, 2, 1)    # (B, H, bq)

    def one_key_block(dq, blk):
      kk, vv, mm = blk[0].astype(jnp.float32), blk[1].astype(jnp.float32), blk[2]
      p = jnp.exp(_scores(qb, kk, mm, scale) - lb[..., None]) * mm[:, None, None, :]
      dv = jnp.einsum("bhqk,bqhd->bkhd", p, dob)
      ds = p * (jnp.einsum("bqhd,bkhd->bhqk", dob, vv) - db[..., None])
      dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, kk) * scale
      return dq, (jnp.einsum("bhqk,bqhd->bkhd", ds, qb) * scale, dv)

    dq, (dk, dv) = lax.scan(one_key_block, jnp.zeros(qb.shape, jnp.float32), (kb, vb, mb))
    return (acc[0] + dk, acc[1] + dv), dq

  zeros = jnp.zeros(kb.shape, jnp.float32)
  (dk, dv), dq = lax.scan(one_query_block, (zeros, zeros), qs)
  return _unblock(dq, sq), _unblock(dk, sk), _unblock(dv, sk)


@jax.custom_vjp
def attend_joined(q, k, v, mask):
  """q (B, Sq, H, D), k/v (B, Sk, H, D), mask (B, Sk): the output in q's dtype."""
  return stats(q, k, v, mask)[0].astype(q.dtype)


def _forward(q, k, v, mask):
  out, lse = stats(q, k, v, mask)
  return out.astype(q.dtype), (q, k, v, mask, out, lse)


def delta(do, out):
  """sum(do * out, -1) as (B, H, Sq) float32: the softmax term of the flash backward."""
  return jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), out)


def _backward(res, do):
  q, k, v, mask, out, lse = res
  dq, dk, dv = grads(q, k, v, mask, lse, do, delta(do, out))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


attend_joined.defvjp(_forward, _backward)


attend = on_joined(attend_joined)
