"""Memory and FLOPs of the refiner's video self-attention at the hv13b 1080p grid, compiled
for a TPU topology on this (TPU-less) machine: dense splash against VSA's XLA gather
reference and VSA's block-sparse Pallas kernel (models/attention/vsa_kernel.py).

What is compiled: one attention layer's forward and backward (jax.grad of a weighted sum of
its output) as the refiner's MMDiT calls it: the video tokens of one 1080p, 32 fps, 15 s clip
(121 x 68 x 120 = 987,360 tokens, cubes of 4 x 4 x 4, top-K keeps 1/4 of the cubes) with 256
text tokens as always-attended context, hv13b's 24 heads of 128, bfloat16, batch 1, the
heads split over the topology's chips (`tensor` axis; 24 heads need 1, 2, 3, 4, 6, 8, 12 or
24 chips). The whole train step multiplies this by 60 layers and adds the rest of the model,
which is the same for the three rows, so the attention layer is where they differ.

Each row reports XLA's bytes per chip (arguments + outputs + temporaries) or, when the
program does not fit, the bytes XLA asked for; XLA's compiled FLOPs (a Pallas kernel is a
custom call XLA cannot count, so the kernel rows' figure leaves the kernel out) and the
analytic attention FLOPs (vsa.vsa_attention_flops: 2 x multiply-adds of QK^T and PV; the
backward is counted as 2 x the forward, flash attention's recompute excluded).

  python benchmarks/vsa_memory.py                     # v5p:2x2x1 (4 chips), the real grid
  python benchmarks/vsa_memory.py --quick             # a small grid, the same code, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from skyreels_jax.models.attention import AttentionSpec, attention  # noqa: E402
from skyreels_jax.models.attention.vsa import num_cubes, vsa_attention_flops  # noqa: E402
from skyreels_jax.tools.aot import hbm_bytes, parse_oom, topology_devices  # noqa: E402

HEADS, HEAD_DIM, TEXT = 24, 128, 256
GRID, QUICK_GRID, CUBE = (121, 68, 120), (9, 16, 16), (4, 4, 4)
ROWS = {"dense splash": ("splash", "auto"), "vsa xla reference": ("vsa", "xla"),
        "vsa pallas kernel": ("vsa", "pallas")}


def compile_row(impl, kernel, grid, top_k, devices):
  mesh = jax.sharding.Mesh(np.array(devices).reshape(1, len(devices)),
                           ("data", "tensor"))
  spec = AttentionSpec(impl, ("data",), None, "tensor", video_grid=grid, vsa_cube=CUBE,
                       vsa_top_k=top_k, vsa_kernel=kernel)
  s = math.prod(grid)
  tok = lambda n: jax.ShapeDtypeStruct((1, n, HEADS, HEAD_DIM), jnp.bfloat16,
                                       sharding=NamedSharding(mesh, P("data", None, "tensor")))
  mask = lambda n: jax.ShapeDtypeStruct((1, n), bool, sharding=NamedSharding(mesh, P("data")))

  def loss(q, k, v, qc, kc, vc, m, cm):
    out, out_ctx = attention(q, k, v, m, q_ctx=qc, k_ctx=kc, v_ctx=vc, ctx_mask=cm, spec=spec)
    return (out.astype(jnp.float32) ** 2).sum() + (out_ctx.astype(jnp.float32) ** 2).sum()

  args = (tok(s),) * 3 + (tok(TEXT),) * 3 + (mask(s), mask(TEXT))
  with jax.set_mesh(mesh):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5))).lower(*args)
  t0 = time.time()
  row = {}
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    need = parse_oom(str(e))
    row.update(fits=False, bytes_per_chip=need[0] if need else None,
               error=str(e).strip().splitlines()[0][:300])
  else:
    mem = compiled.memory_analysis()
    used = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    hbm = hbm_bytes(devices[0])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row.update(fits=hbm is None or used <= hbm, bytes_per_chip=used,
               temp_bytes=mem.temp_size_in_bytes, flops_compiled_per_chip=cost.get("flops"))
  row["compile_seconds"] = round(time.time() - t0, 1)
  return row


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--topology", default="v5p:2x2x1")
  ap.add_argument("--quick", action="store_true", help="a small grid (seconds)")
  ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
  ap.add_argument("--out", default=None, help="also write the JSON report here")
  args = ap.parse_args()
  grid = QUICK_GRID if args.quick else GRID
  devices = topology_devices(args.topology)
  n_cubes = num_cubes(grid, CUBE)
  top_k = n_cubes // 4
  dense, sparse = vsa_attention_flops(grid, CUBE, top_k, HEADS, HEAD_DIM, TEXT)
  report = {"topology": args.topology, "device_kind": devices[0].device_kind,
            "chips": len(devices), "hbm_bytes": hbm_bytes(devices[0]), "grid": grid,
            "tokens": math.prod(grid), "cube": CUBE, "cubes": n_cubes, "top_k": top_k,
            "heads": HEADS, "head_dim": HEAD_DIM, "text": TEXT, "rows": {}}
  analytic = {"dense splash": dense, "vsa xla reference": sparse, "vsa pallas kernel": sparse}
  for name in args.rows.split(","):
    impl, kernel = ROWS[name]
    row = compile_row(impl, kernel, grid, top_k, devices)
    # forward + backward (2x forward), per chip (heads split evenly)
    row["flops_analytic_per_chip"] = 3 * analytic[name] / len(devices)
    report["rows"][name] = row
    gib = lambda b: "?" if b is None else f"{b / 2**30:.2f} GiB"
    print(f"{name:20s} fits={row['fits']!s:5s} bytes/chip={gib(row['bytes_per_chip'])} "
          f"analytic={row['flops_analytic_per_chip']:.3g} FLOP/chip "
          f"compiled={row.get('flops_compiled_per_chip')} ({row['compile_seconds']} s)",
          flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
