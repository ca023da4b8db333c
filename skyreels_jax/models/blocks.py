"""Dual-stream and single-stream blocks of one branch (video or audio), with the V4 additions.

A block runs in phases so that the joint model (mmdit.py) can interleave the two branches:
  1. `attend`: joint self-attention over [modality; text] (AdaLN-Zero), then, video only,
     text cross-attention (Q = video, K/V = the branch's text context);
  2. `cross`: audio<->video cross-attention, Q = this stream, K/V = the other stream;
  3. `feed_forward` (dual blocks only; the single block's MLP runs in parallel in `attend`).

Parameter names follow diffusers' HunyuanVideoTransformerBlock / SingleTransformerBlock
(attn.to_q, attn.add_q_proj, norm1.linear, ff.fc1 <- ff.net.0.proj, ...). The layers that a
pretrained video model does not have (text_cross, av_cross) have zero-initialised output
projections, so at step 0 a block equals the pretrained block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from skyreels_jax.models.attention import AttentionSpec, attention
from skyreels_jax.models.layers import MLP, AdaLNModulation, RMSNorm, dense, layer_norm, modulate
from skyreels_jax.models.rope import apply_rope

Rope = tuple[jax.Array, jax.Array]


class BlockSpec:
  """Static settings shared by every block of a model."""

  def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float,
               attention: AttentionSpec, dtype, param_dtype):
    self.dim, self.num_heads = dim, num_heads
    self.head_dim = dim // num_heads
    self.mlp_dim = int(dim * mlp_ratio)
    self.attention = attention
    self.dtype, self.param_dtype = dtype, param_dtype

  def dense(self, i, o, axes, rngs, **kw):
    return dense(i, o, axes, rngs=rngs, dtype=self.dtype, param_dtype=self.param_dtype, **kw)


def _heads(x: jax.Array, n: int) -> jax.Array:
  return x.reshape(*x.shape[:-1], n, -1)


def _merge_heads(x: jax.Array) -> jax.Array:
  return x.reshape(*x.shape[:-2], -1)


class QKV(nnx.Module):
  """Q, K, V projections with QK RMS-norm over the head dim."""

  def __init__(self, spec: BlockSpec, rngs: nnx.Rngs, prefix: str = "to_"):
    d = spec.dim
    self.n = spec.num_heads
    setattr(self, f"{prefix}q", spec.dense(d, d, ("embed", "heads"), rngs))
    setattr(self, f"{prefix}k", spec.dense(d, d, ("embed", "heads"), rngs))
    setattr(self, f"{prefix}v", spec.dense(d, d, ("embed", "heads"), rngs))
    self.prefix = prefix

  def __call__(self, x, norm_q: RMSNorm, norm_k: RMSNorm):
    p = self.prefix
    q = norm_q(_heads(getattr(self, f"{p}q")(x), self.n))
    k = norm_k(_heads(getattr(self, f"{p}k")(x), self.n))
    v = _heads(getattr(self, f"{p}v")(x), self.n)
    return q, k, v


class CrossAttention(nnx.Module):
  """Pre-LN cross-attention, Q from `x`, K/V from `ctx`; zero-initialised output."""

  def __init__(self, spec: BlockSpec, rngs: nnx.Rngs):
    d, hd = spec.dim, spec.head_dim
    self.spec = spec
    self.to_q = spec.dense(d, d, ("embed", "heads"), rngs)
    self.to_k = spec.dense(d, d, ("embed", "heads"), rngs)
    self.to_v = spec.dense(d, d, ("embed", "heads"), rngs)
    self.norm_q = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.norm_k = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.to_out = spec.dense(d, d, ("heads", "embed"), rngs, zero_init=True)

  def __call__(self, x, ctx, *, kv_mask=None, q_rope: Rope | None = None,
               k_rope: Rope | None = None, ctx_is_text: bool = False, shots=None):
    """ctx_is_text: K/V are the short replicated text tokens (not sequence-sharded).
    shots: (q_shot (B, Sq), k_shot (B, Sk), n) ints: a query of shot k in 1..n attends only
    to keys of shot 0 (global) or k; a query of shot 0 to every key. Run as n + 1 passes
    with key masks, each query taking its shot's (every strategy takes key masks; the text
    is short, so the passes cost little beside self-attention)."""
    n = self.spec.num_heads
    q = self.norm_q(_heads(self.to_q(layer_norm(x)), n))
    k = self.norm_k(_heads(self.to_k(layer_norm(ctx)), n))
    v = _heads(self.to_v(layer_norm(ctx)), n)
    if q_rope is not None:
      q = apply_rope(q, *q_rope)
    if k_rope is not None:
      k = apply_rope(k, *k_rope)
    def attend(mask):
      if ctx_is_text:
        return attention(q, None, None, k_ctx=k, v_ctx=v, ctx_mask=mask,
                         spec=self.spec.attention)
      return attention(q, k, v, mask, spec=self.spec.attention)

    out = attend(kv_mask)
    if shots is not None:
      q_shot, k_shot, n = shots
      mask = jnp.ones(k_shot.shape, bool) if kv_mask is None else kv_mask
      for shot in range(1, n + 1):
        mine = attend(mask & ((k_shot == 0) | (k_shot == shot)))
        out = jnp.where((q_shot == shot)[:, :, None, None], mine, out)
    return self.to_out(checkpoint_name(_merge_heads(out), "cross_attn_out"))


class JointAttention(nnx.Module):
  """[x; ctx] self-attention with separate projections per stream (dual-stream block)."""

  def __init__(self, spec: BlockSpec, rngs: nnx.Rngs):
    d, hd = spec.dim, spec.head_dim
    self.spec = spec
    self.x_qkv = QKV(spec, rngs, "to_")
    self.ctx_qkv = QKV(spec, rngs, "add_")
    self.norm_q = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.norm_k = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.norm_added_q = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.norm_added_k = RMSNorm(hd, param_dtype=spec.param_dtype)
    self.to_out = spec.dense(d, d, ("heads", "embed"), rngs)
    self.to_add_out = spec.dense(d, d, ("heads", "embed"), rngs)

  def __call__(self, x, ctx, *, rope: Rope, x_mask, ctx_mask, attention_spec=None):
    q, k, v = self.x_qkv(x, self.norm_q, self.norm_k)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    cq, ck, cv = self.ctx_qkv(ctx, self.norm_added_q, self.norm_added_k)
    out, out_ctx = attention(q, k, v, x_mask, q_ctx=cq, k_ctx=ck, v_ctx=cv, ctx_mask=ctx_mask,
                             spec=attention_spec or self.spec.attention)
    out = checkpoint_name(_merge_heads(out), "attn_out")
    return self.to_out(out), self.to_add_out(_merge_heads(out_ctx))


class _V4Additions(nnx.Module):
  """Text cross-attention (video) and audio<->video cross-attention, shared by both blocks."""

  def _init_additions(self, spec: BlockSpec, rngs: nnx.Rngs, text_cross: bool, av_cross: bool):
    self.text_cross = CrossAttention(spec, rngs) if text_cross else None
    self.av_cross = CrossAttention(spec, rngs) if av_cross else None

  @staticmethod
  def _joint_text_mask(text_mask, shots):
    """The text keys of the joint self-attention: with shots, the global ones only, so a
    shot's caption reaches the video through the shot-aware cross-attention alone (and a
    frame never reads another shot's caption). No extra pass: a key mask."""
    return text_mask if shots is None else text_mask & (shots[1] == 0)

  def _text_cross(self, x, text_ctx, text_mask, shots=None):
    if self.text_cross is None:
      return x
    return x + self.text_cross(x, text_ctx, kv_mask=text_mask, ctx_is_text=True, shots=shots)

  def cross(self, x, other, *, other_mask, q_rope: Rope, k_rope: Rope):
    """x + CrossAttn(Q = x, K/V = other), on the shared audio-video timeline."""
    return x + self.av_cross(x, other, kv_mask=other_mask, q_rope=q_rope, k_rope=k_rope)


class DualStreamBlock(_V4Additions):
  """HunyuanVideo/Flux dual-stream block plus the V4 additions."""

  def __init__(self, spec: BlockSpec, rngs: nnx.Rngs, *, text_cross: bool, av_cross: bool):
    kw = dict(rngs=rngs, dtype=spec.dtype, param_dtype=spec.param_dtype)
    self.norm1 = AdaLNModulation(spec.dim, 6, **kw)
    self.norm1_context = AdaLNModulation(spec.dim, 6, **kw)
    self.attn = JointAttention(spec, rngs)
    self.ff = MLP(spec.dim, spec.mlp_dim, **kw)
    self.ff_context = MLP(spec.dim, spec.mlp_dim, **kw)
    self._init_additions(spec, rngs, text_cross, av_cross)

  def attend(self, x, ctx, temb, *, rope: Rope, x_mask, text_ctx, text_mask,
             attention_spec=None, shots=None):
    """attention_spec: the self-attention's strategy for this input when it depends on the
    input (VSA needs the video token grid); default the block's. shots: the text
    cross-attention's (CrossAttention); the joint attention then reads the global text."""
    shift, scale, gate, *mlp_mod = self.norm1(temb)
    c_shift, c_scale, c_gate, *c_mlp_mod = self.norm1_context(temb)
    attn_x, attn_ctx = self.attn(modulate(layer_norm(x), shift, scale),
                                 modulate(layer_norm(ctx), c_shift, c_scale),
                                 rope=rope, x_mask=x_mask,
                                 ctx_mask=self._joint_text_mask(text_mask, shots),
                                 attention_spec=attention_spec)
    x = x + gate * attn_x
    ctx = ctx + c_gate * attn_ctx
    x = self._text_cross(x, text_ctx, text_mask, shots)
    return x, ctx, (mlp_mod, c_mlp_mod)

  def feed_forward(self, x, ctx, mods):
    (shift, scale, gate), (c_shift, c_scale, c_gate) = mods
    h = checkpoint_name(self.ff(modulate(layer_norm(x), shift, scale)), "mlp_out")
    hc = self.ff_context(modulate(layer_norm(ctx), c_shift, c_scale))
    return x + gate * h, ctx + c_gate * hc


class SingleStreamBlock(_V4Additions):
  """Flux/HunyuanVideo single-stream block ([x; ctx], shared weights, attention and MLP in
  parallel) plus the V4 additions on the modality tokens."""

  def __init__(self, spec: BlockSpec, rngs: nnx.Rngs, *, text_cross: bool, av_cross: bool):
    kw = dict(rngs=rngs, dtype=spec.dtype, param_dtype=spec.param_dtype)
    self.spec = spec
    self.norm = AdaLNModulation(spec.dim, 3, **kw)
    self.qkv = QKV(spec, rngs, "to_")
    self.norm_q = RMSNorm(spec.head_dim, param_dtype=spec.param_dtype)
    self.norm_k = RMSNorm(spec.head_dim, param_dtype=spec.param_dtype)
    self.proj_mlp = spec.dense(spec.dim, spec.mlp_dim, ("embed", "mlp"), rngs)
    self.proj_out = spec.dense(spec.dim + spec.mlp_dim, spec.dim, ("mlp", "embed"), rngs)
    self._init_additions(spec, rngs, text_cross, av_cross)

  def attend(self, x, ctx, temb, *, rope: Rope, x_mask, text_ctx, text_mask,
             attention_spec=None, shots=None):
    """attention_spec: the self-attention's strategy for this input when it depends on the
    input (VSA needs the video token grid); default the block's. shots: the text
    cross-attention's (CrossAttention); the joint attention then reads the global text."""
    # The same weights on both segments; kept as two arrays so the modality tokens can stay
    # sequence-sharded while the (short) text stays replicated.
    shift, scale, gate = self.norm(temb)
    xn, cn = (modulate(layer_norm(h), shift, scale) for h in (x, ctx))
    q, k, v = self.qkv(xn, self.norm_q, self.norm_k)
    cq, ck, cv = self.qkv(cn, self.norm_q, self.norm_k)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    attn, attn_ctx = attention(q, k, v, x_mask, q_ctx=cq, k_ctx=ck, v_ctx=cv,
                               ctx_mask=self._joint_text_mask(text_mask, shots),
                               spec=attention_spec or self.spec.attention)
    attn = checkpoint_name(_merge_heads(attn), "attn_out")

    def out(h, hn, a):
      mlp = checkpoint_name(jax.nn.gelu(self.proj_mlp(hn), approximate=True), "mlp_out")
      return h + gate * self.proj_out(jnp.concatenate([a, mlp], axis=-1))
    x, ctx = out(x, xn, attn), out(ctx, cn, _merge_heads(attn_ctx))
    x = self._text_cross(x, text_ctx, text_mask, shots)
    return x, ctx, None

  def feed_forward(self, x, ctx, mods):
    del mods
    return x, ctx
