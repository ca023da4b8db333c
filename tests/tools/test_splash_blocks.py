"""benchmarks/splash_blocks.py: splash's long-sequence blocks compile for a v5p chip (the real
Mosaic compile, on this TPU-less machine). The blocks are chosen by SMEM (block tables); this
checks the other limit, VMEM: 2048 x 2048 and 4096 x 1024 blocks fail there, so a block added
to LONG_BLOCKS must pass here."""

import pytest

from benchmarks import splash_blocks as sb
from skyreels_jax.models.attention import splash
from skyreels_jax.tools.aot import topology_devices


@pytest.mark.parametrize("blocks", splash.LONG_BLOCKS)
def test_every_long_block_compiles_and_fits_a_v5p_chip(blocks, monkeypatch):
  monkeypatch.setattr(splash, "LONG_BLOCKS", (blocks,))
  monkeypatch.setattr(splash, "SMEM_TABLE_BYTES", 4)   # 20k tokens take the long blocks
  assert splash.blocks(20_000 + sb.TEXT, 20_000 + sb.TEXT) == blocks
  row = sb.compile_layer(20_000, topology_devices("v5p:2x2x1"))
  assert row["fits"], row
