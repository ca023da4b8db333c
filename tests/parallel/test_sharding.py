"""One training step on a sharded mesh gives the loss and gradients of one device, for the
joint video+audio model with references prepended; the sequence-parallel steps communicate
the way they should (HLO)."""

import math
import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import small_run_config
from skyreels_jax.config import derive
from skyreels_jax.data import references
from skyreels_jax.parallel.mesh import batch_sharding, make_mesh, rules, state_shardings
from skyreels_jax.tasks.examples import make_codecs
from skyreels_jax.train.state import (abstract_state, create_state, make_loss_fn,
                                      make_optimizer, step_key)

# name -> (mesh sizes data, fsdp, sequence, tensor; attention[; dcn sizes])
MESHES = {
    "data": ((8, 1, 1, 1), "dot_product"),
    "fsdp": ((1, 8, 1, 1), "dot_product"),
    "tensor": ((2, 1, 1, 4), "dot_product"),
    "ulysses": ((2, 1, 4, 1), "ulysses"),
    "ring": ((2, 1, 4, 1), "ring"),
    "mixed_2x2x2_ulysses": ((1, 2, 2, 2), "ulysses"),
    # Two simulated slices of four devices: FSDP x tensor inside a slice, data across DCN.
    # The global mesh is (2, 2, 1, 2): data, fsdp and tensor all > 1, the layout in which
    # XLA mis-partitioned a row-parallel matmul until activations were constrained at every
    # residual add (README "Known issues").
    "hybrid_dcn_data": ((1, 2, 1, 2), "dot_product", {"dcn_data": 2}),
}


def _config(mesh=(1, 1, 1, 1), attention="dot_product", dcn=None):
  c = small_run_config()
  c.attention = attention
  c.mesh.data, c.mesh.fsdp, c.mesh.sequence, c.mesh.tensor = mesh
  c.mesh.update(dcn or {})
  return c


def _batch(config):
  geom, _ = derive(config)
  _, tokenizer = make_codecs(config)
  rng = np.random.default_rng(0)
  d = config.data
  captions = ["a red circle bounces", "", "a blue square <sfx> beep </sfx>", "a green triangle"]
  batch = {"video": rng.uniform(-1, 1, (8, d.num_frames, d.height, d.width, 3)).astype(np.float32),
           "audio": rng.uniform(-0.5, 0.5, (8, geom.num_samples, 1)).astype(np.float32),
           **tokenizer.batch(captions * 2)}
  # The loader's references (data/references.py): images, a clip or none, sound for some.
  for k, (shape, dtype) in references.batch_fields(d, 8, d.height, d.width).items():
    batch[k] = rng.uniform(-1, 1, shape).astype(dtype)
  batch["ref_image_count"] = np.array([0, 1, 2, 0, 1, 0, 2, 0], np.int32)
  batch["has_ref_video"] = np.array([0, 0, 0, 1, 0, 1, 0, 0], bool)
  batch["has_ref_audio"] = np.array([1, 0, 1, 0, 0, 1, 1, 0], bool)
  return batch


def _loss_and_grads(config, devices, params_host, batch):
  mesh = make_mesh(config.mesh, devices=devices)
  axis_rules = rules(config)
  tx = make_optimizer(config)
  graphdef, abstract = abstract_state(config, tx)
  shardings = state_shardings(abstract["params"], mesh, axis_rules)
  params = jax.device_put(params_host, shardings)
  b_shard = {k: batch_sharding(mesh, v.ndim, axis_rules) for k, v in batch.items()}
  codecs, _ = make_codecs(config)
  loss_fn = make_loss_fn(config, graphdef, codecs, use_audio=True)
  frozen = codecs.frozen_params()      # identity codecs: none
  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
               in_shardings=(shardings, b_shard, None, None))
  with jax.set_mesh(mesh):
    lowered = fn.lower(params, batch, step_key(config, 0), frozen)
    (loss, parts), grads = lowered.compile()(params, jax.device_put(batch, b_shard),
                                             step_key(config, 0), frozen)
  return float(loss), jax.device_get(parts), jax.device_get(grads), lowered


@pytest.fixture(scope="module")
def reference():
  config = _config()
  tx = make_optimizer(config)
  one = jax.devices()[:1]
  _, state, _ = create_state(config, tx, make_mesh(config.mesh, devices=one), rules(config))
  params = jax.device_get(state["params"])
  # The new layers start at zero; give every parameter a value so each path carries gradient.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: x + rng.normal(0, 0.02, x.shape).astype(x.dtype), params)
  batch = _batch(config)
  loss, parts, grads, _ = _loss_and_grads(config, one, params, batch)
  return params, batch, loss, parts, grads


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_step_matches_one_device(reference, name):
  params, batch, loss, parts, grads = reference
  config = _config(*MESHES[name])
  attention = config.attention
  s_loss, s_parts, s_grads, lowered = _loss_and_grads(config, jax.devices(), params, batch)
  assert s_loss == pytest.approx(loss, rel=2e-5)
  assert float(s_parts["loss_audio"]) == pytest.approx(float(parts["loss_audio"]), rel=2e-5)
  flat, s_flat = jax.tree.leaves(grads), jax.tree.leaves(s_grads)
  assert len(flat) == len(s_flat)
  scale = max(float(np.abs(g).max()) for g in flat)
  assert scale > 0
  for g, s in zip(flat, s_flat):
    np.testing.assert_allclose(np.asarray(s), np.asarray(g), rtol=1e-4, atol=2e-5 * scale)
  hlo = lowered.compile().as_text()
  video_tokens = derive(config)[0].video_tokens
  if attention == "ulysses":
    assert re.search(r"all-to-all", hlo)
    # No all-gather materialises the (padded) video sequence of activations (B, S, H, D) or
    # (B, S, D): only masks (B, S) and the short text are gathered.
    # (Feature-axis gathers of tensor parallelism are fine: only the sequence axis counts.)
    for shape, axes in re.findall(r"= f32\[([0-9,]+)\][^ ]* all-gather\([^)]*\).*?"
                                  r"dimensions=\{([0-9,]+)\}", hlo):
      dims = [int(d) for d in shape.split(",")]
      along = {int(a) for a in axes.split(",")}
      assert not (len(dims) >= 3 and 1 in along and dims[1] >= video_tokens), shape
  if attention == "ring":
    assert "collective-permute" in hlo


def test_state_shardings_follow_the_rules():
  config = _config((1, 2, 2, 2), "ulysses")
  mesh = make_mesh(config.mesh)
  _, abstract = abstract_state(config, make_optimizer(config))
  shardings = state_shardings(abstract, mesh, rules(config))
  qkv = shardings["params"]["mmdit"]["dual_layers"]["video"]["attn"]["x_qkv"]["to_q"]["kernel"]
  mlp = shardings["params"]["mmdit"]["dual_layers"]["video"]["ff"]["fc2"]["kernel"]
  # The width over fsdp x sequence: a sequence-parallel run does not replicate its state
  # `mesh.sequence` times.
  seq = ("fsdp", "sequence")
  assert isinstance(qkv, NamedSharding)
  assert tuple(qkv.spec) == (None, seq, "tensor")           # (layers, embed, heads)
  assert tuple(mlp.spec) == (None, "tensor", seq)           # (layers, mlp, embed)
  adam_mu = shardings["opt_state"][1][0].mu["mmdit"]["dual_layers"]["video"]["ff"]["fc2"]
  assert tuple(adam_mu["kernel"].spec) == (None, "tensor", seq)
  kernel = abstract["params"]["mmdit"]["dual_layers"]["video"]["ff"]["fc2"]["kernel"]
  shard_shape = mlp.shard_shape(kernel.shape)
  assert math.prod(shard_shape) * 8 == math.prod(kernel.shape)   # 8 devices, 8 shards


def test_hybrid_mesh_is_slice_major():
  """dcn_data=2 on one host: two slices of 4 consecutive devices; each slice holds a whole
  (fsdp, tensor) group, so only the data axis crosses slices."""
  config = _config((1, 2, 1, 2), "dot_product", {"dcn_data": 2})
  mesh = make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  assert sorted(ids[0].ravel()) == [0, 1, 2, 3] and sorted(ids[1].ravel()) == [4, 5, 6, 7]
  config.mesh.update(dict(data=-1, fsdp=2, tensor=1, dcn_data=1, dcn_fsdp=2))
  mesh = make_mesh(config.mesh)   # fsdp = 2 slices x 2: the slice is the outer index
  assert dict(mesh.shape)["fsdp"] == 4
  ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0, 0]
  assert set(ids[:, :2].ravel()) == {0, 1, 2, 3} and set(ids[:, 2:].ravel()) == {4, 5, 6, 7}


def test_a_weight_the_mesh_does_not_divide_is_sharded_over_fewer_axes():
  """The README's `tools/aot.py --topology=v5p:8x8x8` example put the MLLM's 1280-wide vision
  weights on fsdp 512 and stopped with jax's IndivisibleError; such a dimension now drops
  mesh axes from the end until the rest divide it (replicated at worst)."""
  from skyreels_jax.parallel.mesh import fit_to_shape
  sizes = {"data": 1, "fsdp": 4, "sequence": 2, "tensor": 1}
  seq = ("fsdp", "sequence")
  assert fit_to_shape(P(None, seq), (3, 16), sizes) == P(None, seq)       # 8 divides 16
  assert fit_to_shape(P(None, seq), (3, 12), sizes) == P(None, "fsdp")    # 4 divides 12
  assert fit_to_shape(P(seq, "tensor"), (6, 5), sizes) == P(None, "tensor")
  assert fit_to_shape(P("fsdp"), (4, 7), sizes) == P("fsdp", None)
  # Through state_shardings, on the 8 simulated devices: a layer narrower than the mesh.
  mesh = make_mesh(_config((1, 4, 2, 1), "ulysses").mesh)
  axis_rules = (("embed", seq), ("mlp", "tensor"))

  class Narrow(nnx.Module):
    def __init__(self):
      init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed", "mlp"))
      self.wide = nnx.Param(init(jax.random.key(0), (16, 4)))
      self.narrow = nnx.Param(init(jax.random.key(0), (12, 4)))
      self.odd = nnx.Param(init(jax.random.key(0), (5, 4)))

  with nnx.use_eager_sharding(False):
    state = nnx.state(Narrow())
  shardings = state_shardings(state, mesh, axis_rules)
  assert shardings["wide"].spec == P(seq, "tensor")
  assert shardings["narrow"].spec == P("fsdp", "tensor")
  assert shardings["odd"].spec == P(None, "tensor")
  for name, value in state.items():   # each places without IndivisibleError
    jax.device_put(value.value, shardings[name])
