"""Video Sparse Attention against dense attention: K = all cubes is dense (outputs and
gradients, on 8 simulated devices), K < all is exactly the claimed block mask, a known
selection is found, padding never wins a cube, and everything off the video grid is dense.
The block-sparse Pallas kernel (interpret mode) equals the XLA reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from skyreels_jax.models.attention import AttentionSpec, attention
from skyreels_jax.models.attention import vsa_kernel
from skyreels_jax.models.attention.vsa import select_cubes, vsa_attention_flops

# A grid that does not divide the cube (T = 3 is padded to 4): 8 cubes of 8 tokens.
GRID, CUBE = (3, 4, 4), (2, 2, 2)
B, H, D, L, N_REF = 2, 4, 8, 5, 16          # N_REF: one reference frame of 4 x 4 tokens
S_GRID = 48
AXES = ("data", "fsdp", "sequence", "tensor")


def vsa(top_k, grid=GRID, cube=CUBE, kernel="auto"):
  return AttentionSpec("vsa", ("data", "fsdp"), None, "tensor", video_grid=grid,
                       vsa_cube=cube, vsa_top_k=top_k, vsa_kernel=kernel)


def make_data(n_ref, seed=0):
  rng = np.random.default_rng(seed)
  s = n_ref + S_GRID
  r = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return dict(q=r(B, s, H, D), k=r(B, s, H, D), v=r(B, s, H, D),
              m=jnp.asarray(rng.random((B, s)) > 0.2),
              qc=r(B, L, H, D), kc=r(B, L, H, D), vc=r(B, L, H, D),
              cm=jnp.asarray(rng.random((B, L)) > 0.3).at[:, 0].set(True))


def joint(d, spec):
  return attention(d["q"], d["k"], d["v"], d["m"], q_ctx=d["qc"], k_ctx=d["kc"],
                   v_ctx=d["vc"], ctx_mask=d["cm"], spec=spec)


def close(a, b, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def cube_of(grid=GRID, cube=CUBE):
  """Row-major cube index of every row-major grid token, from its coordinates."""
  n = [-(-g // c) for g, c in zip(grid, cube)]
  return np.array([(t // cube[0] * n[1] + h // cube[1]) * n[2] + w // cube[2]
                   for t, h, w in itertools.product(*map(range, grid))])


@pytest.mark.parametrize("n_ref", [0, N_REF])
def test_all_cubes_equals_dot_product(n_ref):
  d = make_data(n_ref)
  mesh = jax.make_mesh((2, 1, 1, 4), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", None, "tensor")
                                                    if x.ndim == 4 else P("data")))
  with jax.set_mesh(mesh):
    out = jax.jit(lambda d: joint(d, vsa(0)))(jax.tree.map(shard, d))
  close(out, joint(d, "dot_product"))
  close(jax.jit(lambda d: joint(d, vsa(8)))(d), joint(d, "dot_product"))   # K = N explicitly


def test_all_cubes_gradients_equal_dense():
  d = make_data(N_REF, seed=1)
  floats = ("q", "k", "v", "qc", "kc", "vc")

  def loss(f, spec):
    out, ctx = joint(dict(d, **f), spec)
    return (out ** 2).sum() + (ctx * d["vc"]).sum()

  f = {key: d[key] for key in floats}
  close(jax.jit(jax.grad(lambda f: loss(f, vsa(0))))(f),
        jax.grad(lambda f: loss(f, "dot_product"))(f), atol=1e-5)


@pytest.mark.parametrize("n_ref", [0, N_REF])
def test_top_k_is_exactly_the_block_mask(n_ref):
  """K = 3 of 8 cubes: the selection is the top-3 of pooled-cube scores recomputed here, and
  the output is masked dense attention under the block mask built from that selection."""
  d, top_k = make_data(n_ref, seed=2), 3
  cid = cube_of()
  q, k, m = (np.asarray(d[x][:, n_ref:]) for x in ("q", "k", "m"))
  idx = np.asarray(select_cubes(d["q"][:, n_ref:], d["k"][:, n_ref:], d["m"][:, n_ref:],
                                GRID, CUBE, top_k))
  assert idx.shape == (B, H, 8, top_k)
  for b, h in itertools.product(range(B), range(H)):
    qp = np.stack([q[b, cid == c, h].mean(0) for c in range(8)])
    kp = np.stack([k[b, (cid == c) & m[b], h].mean(0) for c in range(8)])
    want = np.argsort(-(qp @ kp.T), axis=1)[:, :top_k]
    assert [set(r) for r in want] == [set(r) for r in idx[b, h]]

  # Token mask (B, H, Sq, Sk) over queries [refs; grid; ctx] and keys [refs; grid; ctx].
  s, sk = n_ref + S_GRID, n_ref + S_GRID + L
  allowed = np.ones((B, H, s + L, sk), bool)
  for b, h in itertools.product(range(B), range(H)):
    chosen = np.zeros((8, 8), bool)                              # (query cube, key cube)
    chosen[np.arange(8)[:, None], idx[b, h]] = True
    allowed[b, h, n_ref:s, n_ref:s] = chosen[cid][:, cid]
  valid = np.concatenate([np.asarray(d["m"]), np.asarray(d["cm"])], 1)
  allowed &= valid[:, None, None, :]
  cat = lambda a, b: jnp.concatenate([d[a], d[b]], 1)
  ref = jax.nn.dot_product_attention(cat("q", "qc"), cat("k", "kc"), cat("v", "vc"),
                                     mask=jnp.asarray(allowed), implementation="xla")
  out, out_ctx = jax.jit(lambda d: joint(d, vsa(top_k)))(d)
  close((out, out_ctx), (ref[:, :s], ref[:, s:]))
  # The sparsity is real: the result differs from dense attention.
  assert np.abs(np.asarray(out) - np.asarray(joint(d, "dot_product")[0])).max() > 1e-2


def test_known_selection_and_padding_never_wins():
  """4 cubes; the keys of cube m point along e_m, the queries of cube n along e_perm[n]: with
  K = 1 each query cube picks perm[n] and attends there (plus the text), and masked keys
  (pointing the other way) are left out of the pooling. A cube of padding is never chosen."""
  grid, cube, perm = (2, 4, 4), (2, 2, 2), np.array([2, 0, 3, 1])
  cid = cube_of(grid, cube)
  rng = np.random.default_rng(3)
  eye = np.eye(D, dtype=np.float32)
  k = 3 * eye[cid] + 0.1 * rng.normal(size=(32, D))
  q = 3 * eye[perm[cid]] + 0.1 * rng.normal(size=(32, D))
  m = rng.random(32) > 0.25
  k = np.where(m[:, None], k, -30 * eye[cid])                 # would flip the pooled key
  to = lambda x: jnp.asarray(x, jnp.float32)[None, :, None]   # (1, 32, 1, D)
  v = to(rng.normal(size=(32, D)))
  kc, vc = to(rng.normal(size=(L, D))), to(rng.normal(size=(L, D)))
  mask = jnp.asarray(m)[None]
  run = lambda mask, top_k: attention(to(q), to(k), v, mask, k_ctx=kc, v_ctx=vc,
                                      spec=vsa(top_k, grid, cube))
  idx = np.asarray(select_cubes(to(q), to(k), mask, grid, cube, 1))
  np.testing.assert_array_equal(idx[0, 0, :, 0], perm)
  out = run(mask, 1)
  for n in range(4):
    keys = np.concatenate([np.flatnonzero(cid == perm[n]), 32 + np.arange(L)])
    kk, vv = jnp.concatenate([to(k), kc], 1), jnp.concatenate([v, vc], 1)
    want = jax.nn.dot_product_attention(
        to(q)[:, cid == n], kk[:, keys], vv[:, keys],
        mask=jnp.concatenate([mask, jnp.ones((1, L), bool)], 1)[:, None, None, keys])
    close(out[:, cid == n], want)

  # Cube 2 all padding: query cube 0 (which wants it) must take a valid cube, and with K = 4
  # the padded cube comes last for every query cube.
  padded = mask & jnp.asarray(cid != 2)[None]
  assert int(select_cubes(to(q), to(k), padded, grid, cube, 1)[0, 0, 0, 0]) != 2
  np.testing.assert_array_equal(
      np.asarray(select_cubes(to(q), to(k), padded, grid, cube, 4))[0, 0, :, -1], 2)


def test_off_the_grid_is_dense():
  """No grid, a main length off the grid (audio, a reference count that is not whole
  frames), cross-attention of other lengths and text-only keys all run dense attention."""
  d = make_data(N_REF, seed=4)
  dense = joint(d, "dot_product")
  close(joint(d, AttentionSpec("vsa", vsa_top_k=1)), dense, atol=0)
  off = {key: x[:, 3:] for key, x in d.items() if key in ("q", "k", "v", "m")}
  close(joint(dict(d, **off), vsa(1)), joint(dict(d, **off), "dot_product"), atol=0)
  close(attention(d["q"], d["k"][:, :20], d["v"][:, :20], spec=vsa(1)),
        attention(d["q"], d["k"][:, :20], d["v"][:, :20]), atol=0)
  close(attention(d["q"], None, None, k_ctx=d["kc"], v_ctx=d["vc"], ctx_mask=d["cm"],
                  spec=vsa(1)),
        attention(d["q"], None, None, k_ctx=d["kc"], v_ctx=d["vc"], ctx_mask=d["cm"]), atol=0)


@pytest.mark.parametrize("n_ref", [0, N_REF])
def test_pallas_kernel_equals_the_xla_reference(n_ref, monkeypatch):
  """The block-sparse kernel (Pallas interpret mode) against the XLA gather: outputs and
  every gradient, K = 3 of 8 cubes, sharded over batch and heads on 8 devices (the kernel
  runs in shard_map), and with SMEM chunks of one query cube (8 kernel calls per head)."""
  monkeypatch.setattr(vsa_kernel, "SMEM_INDICES", 3)
  d = make_data(n_ref, seed=5)
  mesh = jax.make_mesh((2, 1, 1, 4), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", None, "tensor")
                                                    if x.ndim == 4 else P("data")))
  floats = ("q", "k", "v", "qc", "kc", "vc")

  def run(kernel):
    def loss(f):
      out, ctx = joint(dict(d, **f), vsa(3, kernel=kernel))
      return (out * d["v"]).sum() + (ctx * d["vc"]).sum(), (out, ctx)
    with jax.set_mesh(mesh):
      f = {key: shard(d[key]) for key in floats}
      return jax.jit(jax.grad(loss, has_aux=True))(f)

  grads, outs = run("pallas")
  want_grads, want_outs = run("xla")
  close(outs, want_outs, atol=2e-6)
  close(grads, want_grads, atol=2e-5)
  assert np.abs(np.asarray(grads["k"])).max() > 1e-2       # not vacuous


def test_pallas_kernel_without_dense_keys():
  """No references and no text: the kernel's sparse part alone (no log-sum-exp merge), with
  masked keys, in bfloat16 (the refiner's dtype) against the reference at bf16 tolerance."""
  d = make_data(0, seed=6)
  q, k, v = (d[x].astype(jnp.bfloat16) for x in ("q", "k", "v"))
  run = lambda kernel: jax.value_and_grad(
      lambda q, k, v: (attention(q, k, v, d["m"], spec=vsa(2, kernel=kernel)).astype(
          jnp.float32) * d["v"]).sum(), argnums=(0, 1, 2))(q, k, v)
  got, want = run("pallas"), run("xla")
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=2e-2)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=6e-2, rtol=5e-2)


def test_bad_cube_is_named():
  d = make_data(0)
  with pytest.raises(ValueError, match="vsa_cube"):
    joint(d, AttentionSpec("vsa", video_grid=GRID, vsa_cube=(0, 2, 2)))
  with pytest.raises(ValueError, match="vsa_kernel"):
    joint(d, vsa(2, kernel="triton"))


def test_flops_by_hand():
  # grid (3, 4, 4) -> S = 48 tokens; padded to (4, 4, 4): N = 8 cubes of C = 8; L = 2;
  # width = heads x head_dim = 8; K = 2.
  # dense   4 * 50 * 50 * 8                                   = 80000
  # fine    4 * (8 * 8) * (2 * 8 + 2) * 8                     = 36864
  # context 4 * 2 * 50 * 8                                    =  3200
  # coarse  2 * 8 * 8 * 8                                     =  1024
  assert vsa_attention_flops(GRID, CUBE, 2, 2, 4, 2) == (80000, 36864 + 3200 + 1024)
  # K = 0 means all 8 cubes: fine = 4 * 64 * 66 * 8 = 135168 (padding makes it > dense).
  assert vsa_attention_flops(GRID, CUBE, 0, 2, 4, 2) == (80000, 135168 + 3200 + 1024)
