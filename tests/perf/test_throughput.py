"""Throughput figures: the step's tokens and analytic FLOPs from the model inputs, the
peak table behind MFU."""

import jax
import numpy as np
import pytest

from conftest import small_run_config
from skyreels_jax.config import derive
from skyreels_jax.perf import throughput
from skyreels_jax.tasks.examples import input_shapes, make_codecs
from skyreels_jax.tools import aot


@pytest.mark.parametrize("kind, peak", [("TPU v5 lite", 197e12), ("TPU v5", 459e12),
                                        ("TPU v4", 275e12), ("TPU v6 lite", 918e12),
                                        ("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA B200", 2250e12), ("cpu", None)])
def test_peak_table(kind, peak):
  assert throughput.peak_flops(kind) == peak


def test_step_cost_equals_the_planning_tools_count():
  """The trainer's per-step FLOPs (from the traced model inputs, references included)
  equal tools/aot.py's count from the config's geometry; tokens count every stream."""
  config = small_run_config()
  geom, mcfg = derive(config)
  codecs, tokenizer = make_codecs(config)
  from skyreels_jax.tools.aot import abstract_batch
  from skyreels_jax.parallel.mesh import make_mesh, rules
  batch = abstract_batch(config, make_mesh(config.mesh), rules(config))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  inputs = input_shapes(config, codecs, batch, codecs.frozen_params(), mcfg.use_audio)
  cost = throughput.step_cost(mcfg, inputs)
  assert cost["flops"] == aot.analytic_flops(config)["step"]
  ref_frames, ref_audio = aot.reference_slots(config)
  per_frame = geom.video_tokens // geom.video_grid[0]
  want = config.data.batch_size * (geom.video_tokens + ref_frames * per_frame
                                   + geom.audio_tokens + ref_audio)
  assert cost["tokens"] == want and cost["tokens"] > 0
