"""Splash attention's block sizes at long sequences, compiled for a TPU topology on this
(TPU-less) machine: the fixed 512-token blocks against `splash.blocks` (larger blocks where
the 512-blocks' tables would not fit the chip's scalar memory).

The splash kernel keeps one entry per (query block, key block) pair in SMEM (1 MiB on v5p).
Inside Ulysses each chip attends over the *whole* sequence with a share of the heads, so at
hv13b 480p the 49 s clip's 307k video tokens in 512-blocks need 1.08 MB of tables and the
train step's compile failed ("Ran out of memory in memory space smem. Used 1.11M of 1.00M").

What is compiled: one joint attention layer's forward and backward (jax.grad of a sum of
squares of its outputs) as Ulysses' local attention runs it: `tokens` video tokens plus 256
text tokens, hv13b's 24 heads of 128 split over the topology's 4 chips (6 per chip, as with
sequence 4), bfloat16, batch 1. Each row: the blocks, their table bytes, whether it compiles
and fits, XLA's bytes per chip, or the compiler's error line.

  python benchmarks/splash_blocks.py                       # the 480p Ulysses points, v5p
  python benchmarks/splash_blocks.py --tokens=20000 --quick_budget   # seconds, the same code
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.vsa_memory import HEAD_DIM, HEADS, TEXT, compile_row  # noqa: E402
from skyreels_jax.models.attention import splash  # noqa: E402
from skyreels_jax.tools.aot import topology_devices  # noqa: E402

# hv13b at 480x832, 16 fps: 30 x 52 tokens per latent frame, 1 + 4 S latent frames for S s.
LENGTHS = {"41 s": 165 * 1560, "49 s": 197 * 1560, "51 s": 205 * 1560}


def compile_layer(tokens: int, devices) -> dict:
  """vsa_memory's layer (text context, heads over the chips' `tensor` axis) with splash."""
  return compile_row("splash", "auto", (tokens, 1, 1), 1, devices)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--topology", default="v5p:2x2x1")
  ap.add_argument("--tokens", default=",".join(f"{n}" for n in LENGTHS.values()),
                  help="comma-separated video token counts")
  ap.add_argument("--quick_budget", action="store_true",
                  help="a 4-byte table budget, so that short sequences take the long blocks")
  ap.add_argument("--out", default=None, help="also write the JSON report here")
  args = ap.parse_args()
  devices = topology_devices(args.topology)
  names = {v: k for k, v in LENGTHS.items()}
  budget = 4 if args.quick_budget else splash.SMEM_TABLE_BYTES
  report = {"topology": args.topology, "device_kind": devices[0].device_kind,
            "chips": len(devices), "heads": HEADS, "head_dim": HEAD_DIM, "text": TEXT,
            "table_budget_bytes": budget, "rows": []}
  for tokens in (int(t) for t in args.tokens.split(",")):
    s = tokens + TEXT
    for rule, smem in (("512 blocks", float("inf")), ("splash.blocks", budget)):
      splash.SMEM_TABLE_BYTES = smem
      bq, bkv = splash.blocks(s, s)
      row = dict(clip=names.get(tokens), tokens=tokens, rule=rule, blocks=[bq, bkv],
                 table_bytes=splash.table_bytes(s, s, bq, bkv), **compile_layer(tokens, devices))
      report["rows"].append(row)
      print(f"{tokens:>8} tokens {rule:14s} blocks={bq}x{bkv} tables={row['table_bytes']:>9,} B "
            f"fits={row['fits']} bytes/chip={row.get('bytes_per_chip')} "
            f"{row.get('error', '')} ({row['compile_seconds']} s)", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
