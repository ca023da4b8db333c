"""Run by test_ring_steps.py in a child process with the trainer's XLA flags: STEPS training
steps of a scanned stack of attention layers (weights FSDP- and tensor-sharded, attention
sequence-parallel) on a (1, 2, 2, 2) mesh of 8 CPU devices, dispatched the way the trainer
dispatches them (`one_step_in_flight`). Prints "ok STEPS" when every step finished."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from skyreels_jax.models.attention import AttentionSpec, attention
from skyreels_jax.train.trainer import one_step_in_flight

STEPS, IMPL = int(sys.argv[1]), sys.argv[2]
LAYERS, B, S, H, D = 4, 2, 16, 4, 8
AXES = ("data", "fsdp", "sequence", "tensor")
mesh = jax.make_mesh((1, 2, 2, 2), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
spec = AttentionSpec(IMPL, ("data", "fsdp"), "sequence", "tensor")


def layer(x, w):
  qkv = (x @ w["qkv"]).reshape(B, S, 3, H, D)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  # The model's three kinds: joint (main + text context), cross (another length) and
  # context-only keys.
  out, _ = attention(q, k, v, q_ctx=q[:, :4], k_ctx=k[:, :4], v_ctx=v[:, :4], spec=spec)
  out = out + attention(q, k[:, :S // 2 + 1], v[:, :S // 2 + 1], spec=spec)
  out = out + attention(q, None, None, k_ctx=k[:, :3], v_ctx=v[:, :3], spec=spec)
  return x + out.reshape(B, S, H * D) @ w["out"], None


def loss(w, x):
  return (jax.lax.scan(layer, x, w)[0] ** 2).mean()


rng = np.random.default_rng(0)
weights = {"qkv": rng.normal(size=(LAYERS, H * D, 3 * H * D)) * 0.1,
           "out": rng.normal(size=(LAYERS, H * D, H * D)) * 0.1}
with jax.set_mesh(mesh):
  w = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), weights),
                     {"qkv": NamedSharding(mesh, P(None, "fsdp", "tensor")),
                      "out": NamedSharding(mesh, P(None, "tensor", "fsdp"))})
  x = jax.device_put(jnp.asarray(rng.normal(size=(B, S, H * D)), jnp.float32),
                     NamedSharding(mesh, P(("data", "fsdp"), "sequence")))
  step = jax.jit(lambda w, x: jax.tree.map(lambda p, g: p - 0.1 * g, w, jax.grad(loss)(w, x)))
  serial = one_step_in_flight(mesh)
  for _ in range(STEPS):
    w = step(w, x)
    if serial:
      jax.block_until_ready(w)
  assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(w))
print("ok", STEPS)
