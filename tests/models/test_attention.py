"""Every attention strategy against plain dot-product attention on 8 simulated devices:
outputs and gradients, with padding masks, a replicated text context, lengths that do not
divide the sequence axis, and cross-attention of different lengths."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skyreels_jax.models.attention import AttentionSpec, attention

B, S, S_OTHER, L, H, D = 2, 13, 7, 5, 4, 8
AXES = ("data", "fsdp", "sequence", "tensor")

# strategy (ulysses:<sp_kernel>), mesh (data, fsdp, sequence, tensor); ulysses alone is its
# CPU default, blockwise.
CASES = [
    ("ulysses", (2, 1, 4, 1)), ("ulysses", (1, 1, 2, 2)), ("ulysses", (1, 2, 2, 2)),
    ("ulysses:dot_product", (1, 2, 2, 2)), ("ulysses:splash", (1, 1, 2, 2)),
    ("ring", (2, 1, 4, 1)), ("ring", (1, 1, 2, 2)), ("ring", (1, 2, 2, 2)),
    ("splash", (2, 1, 1, 4)), ("blockwise", (2, 1, 1, 4)),
]


def make_spec(impl):
  impl, _, kernel = impl.partition(":")
  return AttentionSpec(impl, ("data", "fsdp"), "sequence", "tensor", sp_kernel=kernel or "auto")


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  mask = jnp.asarray(rng.random((B, S)) > 0.2)
  ctx_mask = jnp.asarray(rng.random((B, L)) > 0.3).at[:, 0].set(True)
  return dict(q=r(B, S, H, D), k=r(B, S, H, D), v=r(B, S, H, D), m=mask,
              qc=r(B, L, H, D), kc=r(B, L, H, D), vc=r(B, L, H, D), cm=ctx_mask,
              k2=r(B, S_OTHER, H, D), v2=r(B, S_OTHER, H, D))


def joint(d, spec):
  """The dual/single block's self-attention: main tokens plus the text context."""
  return attention(d["q"], d["k"], d["v"], d["m"], q_ctx=d["qc"], k_ctx=d["kc"],
                   v_ctx=d["vc"], ctx_mask=d["cm"], spec=spec)


def cross(d, spec):
  """Audio<->video cross-attention: main tokens of another length."""
  return attention(d["q"], d["k2"], d["v2"], spec=spec)


def text_cross(d, spec):
  """Video text cross-attention: context-only keys."""
  return attention(d["q"], None, None, k_ctx=d["kc"], v_ctx=d["vc"], ctx_mask=d["cm"],
                   spec=spec)


FLOATS = ("q", "k", "v", "qc", "kc", "vc", "k2", "v2")


def loss(floats, d, spec):
  d = dict(d, **floats)
  main, ctx = joint(d, spec)
  return (main ** 2).sum() + (ctx ** 2).sum() + cross(d, spec).sum() + text_cross(d, spec).sum()


@pytest.mark.parametrize("impl,mesh_shape", CASES, ids=[f"{i}-{m}" for i, m in CASES])
def test_strategy_matches_dot_product(data, impl, mesh_shape):
  mesh = jax.make_mesh(mesh_shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  spec = make_spec(impl)
  ref = "dot_product"
  with jax.set_mesh(mesh):
    out = jax.jit(lambda d: (joint(d, spec), cross(d, spec), text_cross(d, spec)))(data)
    floats = {k: data[k] for k in FLOATS}
    grads = jax.jit(jax.grad(lambda f: loss(f, data, spec)))(floats)
  ref_out = (joint(data, ref), cross(data, ref), text_cross(data, ref))
  ref_grads = jax.grad(lambda f: loss(f, data, ref))({k: data[k] for k in FLOATS})
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref_out)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)
  for key in FLOATS:
    np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(ref_grads[key]),
                               atol=1e-5, rtol=1e-5)


def test_small_blocks_match_dot_product(data, monkeypatch):
  """Blocks of 4 tokens: several query and key blocks, padded, per device and per ring step
  (13 tokens over a sequence axis of 2: 7 per device, 2 blocks each)."""
  from skyreels_jax.models.attention import blockwise
  monkeypatch.setattr(blockwise, "BLOCK", 4)
  mesh = jax.make_mesh((1, 2, 2, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  floats = {k: data[k] for k in FLOATS}
  ref = jax.grad(lambda f: loss(f, data, "dot_product"))(floats)
  for impl in ("blockwise", "ring", "ulysses:blockwise"):
    with jax.set_mesh(mesh):
      grads = jax.jit(jax.grad(lambda f: loss(f, data, make_spec(impl))))(floats)
    for key in FLOATS:
      np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(ref[key]), atol=1e-5,
                                 rtol=1e-5, err_msg=f"{impl} d{key}")


def _largest_buffer(impl, s=1536, b=2, h=4, d=8):
  """Elements of the largest array in the compiled gradient of attention over s tokens on a
  (1, 2, 4, 1) mesh: b / 2 clips and all h heads per device, s / 4 tokens (ring) or all s
  tokens of h / 4 heads (Ulysses)."""
  mesh = jax.make_mesh((1, 2, 4, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  x = jax.ShapeDtypeStruct((b, s, h, d), jnp.float32)
  m = jax.ShapeDtypeStruct((b, s), jnp.bool_)
  spec = make_spec(impl)
  loss = lambda q, k, v, m: (attention(q, k, v, m, spec=spec) ** 2).sum()
  with jax.set_mesh(mesh):
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, m).compile().as_text()
  shapes = re.findall(r"\b[a-z]+\d+\[([\d,]*)\]", text)
  return max(math.prod(int(n) for n in shape.split(",") if n) for shape in shapes)


def test_ulysses_step_has_no_s_by_s_buffer():
  """The compiled Ulysses gradient holds no S x S scores (1536^2 = 2.4M elements): its local
  blockwise kernel keeps 512 x 512 blocks. The control, its dot_product kernel, does."""
  s = 1536
  assert _largest_buffer("ulysses:dot_product", s) >= s * s
  assert _largest_buffer("ulysses", s) <= 512 * 512


def test_ring_backward_keeps_one_block_not_n():
  """Ring attention's gradient keeps one (S/n)^2 block of scores per device at a time (the
  custom VJP recomputes them). Without it, autodiff of the ring stores all n blocks: a
  4 x 384 x 384 x 4-head buffer per device (seen before the custom VJP)."""
  s, n, heads = 1536, 4, 4
  assert _largest_buffer("ring", s, h=heads) <= heads * (s // n) ** 2


def test_splash_takes_lengths_that_are_not_multiples_of_its_block():
  """600 queries and 530 keys (above the 512 block, not multiples of it): padded to the block
  and masked, the same output and gradients as plain attention (interpret mode on CPU)."""
  from skyreels_jax.models.attention import splash
  assert splash.block(157440) == 512 and splash.block(300) == 384 and splash.block(13) == 128
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 600, 1, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(1, 530, 1, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((1, 530)) > 0.1)
  f = lambda impl: lambda q, k, v: attention(q, k, v, mask, spec=impl)
  out = jax.jit(f("splash"))(q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(f("dot_product")(q, k, v)),
                             atol=2e-6, rtol=1e-5)
  g = lambda impl: jax.grad(lambda q, k, v: (f(impl)(q, k, v) ** 2).sum(), argnums=(0, 1, 2))
  for a, b in zip(jax.jit(g("splash"))(q, k, v), g("dot_product")(q, k, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_long_sequences_take_larger_splash_blocks_and_stay_exact(monkeypatch):
  """Where the 512-blocks' SMEM tables would not fit (v5p: 1 MiB; 480p Ulysses at 49 s needs
  1.08 MB), splash takes larger blocks, with the key block computed in 512-tiles. Forced here
  with a tiny table budget: 1500 queries in a 2048-block, 1100 keys in 1024-blocks, the same
  output and gradients as plain attention (interpret mode on CPU)."""
  from skyreels_jax.models.attention import splash
  assert splash.table_bytes(307_000, 307_000, 512, 512) > 1_000_000
  assert splash.blocks(307_000, 307_000) == (1024, 1024)   # the 49 s point: 270 kB
  assert splash.blocks(257_000, 257_000) == (512, 512)     # 41 s compiled so: unchanged
  assert splash.blocks(600, 530) == (512, 512)
  monkeypatch.setattr(splash, "SMEM_TABLE_BYTES", 4)
  assert splash.blocks(1500, 1100) == (2048, 1024)
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 1500, 1, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(1, 1100, 1, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((1, 1100)) > 0.1)
  f = lambda impl: lambda q, k, v: attention(q, k, v, mask, spec=impl)
  program = str(jax.make_jaxpr(f("splash"))(q, k, v))
  assert "[1,1,2048,8]" in program and "[1,1,1536,8]" not in program   # 2048-, not 512-padded
  g = lambda impl: jax.value_and_grad(lambda q, k, v: (f(impl)(q, k, v) ** 2).sum(),
                                      argnums=(0, 1, 2))
  (got, got_g), (want, want_g) = jax.jit(g("splash"))(q, k, v), g("dot_product")(q, k, v)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for a, b in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_padded_keys_do_not_leak(data):
  """Masked keys change nothing, for a sequence-parallel strategy with padding."""
  mesh = jax.make_mesh((2, 1, 4, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  spec = AttentionSpec("ring", ("data", "fsdp"), "sequence", "tensor")
  changed = dict(data, k=jnp.where(data["m"][..., None, None], data["k"], 100.0))
  with jax.set_mesh(mesh):
    a = jax.jit(lambda d: joint(d, spec))(data)
    b = jax.jit(lambda d: joint(d, spec))(changed)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)


def test_sequence_parallel_needs_a_mesh(data):
  with pytest.raises(ValueError, match="needs a mesh"):
    joint(data, AttentionSpec("ulysses", ("data",), "sequence", None))


def test_ulysses_heads_must_divide(data):
  mesh = jax.make_mesh((1, 1, 4, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  spec = AttentionSpec("ulysses", ("data", "fsdp"), "sequence", "tensor")
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="model.num_heads"):
    jax.jit(lambda d: joint(d, spec))(data)


def test_unknown_strategy_is_named(data):
  with pytest.raises(ValueError, match="attention='flash'"):
    joint(data, "flash")
