"""Ahead-of-time compile of the real train step for a TPU topology, on a machine with no TPU.

  python -m skyreels_jax.tools.aot --config=configs/hv13b.py --topology=v5p:8x8x8 \
      [--batch_size=N] [--config.data.height=720 ...]
  # no --batch_size (or --config.data.batch_size): one clip per data-parallel shard
  # two slices joined by DCN, data parallel across them:
  python -m skyreels_jax.tools.aot --config=configs/hv13b.py --topology=v5p:4x4x4 \
      --num_slices=2 --config.mesh.dcn_data=2

libtpu (requirements-test.txt) compiles for abstract TPU devices
(`jax.experimental.topologies`). The program is the trainer's: `make_train_step` +
`jit_train_step` with the trainer's state and batch shardings, lowered on ShapeDtypeStructs,
so XLA's memory and FLOP figures are those of a real run. Prints one JSON line last; exits 1
when the step does not fit in HBM (XLA's `CompileTimeHbmOom`), other errors propagate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from skyreels_jax.config import ConfigError, derive, hybrid_mesh_shape, validate
from skyreels_jax.parallel.mesh import (batch_sharding, data_parallel_size, make_mesh, rules,
                                        state_shardings)
from skyreels_jax.data import given, references
from skyreels_jax.parallel import multihost
from skyreels_jax.tasks.examples import make_codecs, reference_slots
from skyreels_jax.perf.flops import mmdit_train_flops
from skyreels_jax.train.init import lora_base_target
from skyreels_jax.train.state import (LORA_BASE, abstract_state, frozen_shardings,
                                      jit_train_step, lora_on, make_optimizer,
                                      make_train_step, with_empty_latents)
from skyreels_jax.weights.trees import with_shardings

# HBM per JAX device (a chip; megacore on v4/v5p) by `device_kind`: the abstract devices
# expose no memory size. v5p and v5e: what XLA reports as available in its OOM message
# (95.74G, 15.75G), a little under the nominal 95 GB / 16 GiB; v4 and v6e: nominal.
_G = 1 << 30
HBM_BYTES = {"TPU v4": 32 * _G, "TPU v5 lite": int(15.75 * _G), "TPU v5": int(95.74 * _G),
             "TPU v6 lite": 32 * _G}
# The two wordings of XLA's compile-time OOM: "... required for HLO temporaries (508.92G)
# exceeds available HBM (95.74G)" and "Used 140.2G of 95.74G hbm".
_OOM = (re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
        re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"))


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Abstract (compile-only) devices of a TPU topology such as `v5p:4x4x4` or `v5e:2x2`, on
  `num_slices` slices joined by DCN (each device has a `slice_index`). v5p/v4 name chips
  (v5p:4x4x4 = 64 chips = v5p-128, which counts TensorCores)."""
  from jax.experimental import topologies  # late: optional, loads libtpu
  # libtpu takes a machine-wide lock file by default; compiling needs no exclusive TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  return list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                           num_slices=num_slices).devices)


def hbm_bytes(device) -> int | None:
  return HBM_BYTES.get(device.device_kind)


def abstract_batch(config, mesh, axis_rules) -> dict[str, jax.ShapeDtypeStruct]:
  """The loader's batch as ShapeDtypeStructs with the trainer's batch sharding: video
  (B, F, H, W, 3) uint8, audio (B, S, C) float32, the tokenizer's fields (B, L)."""
  geom, _ = derive(config, abstract=True)
  b, d, length = config.data.batch_size, config.data, config.text.max_length
  shapes = {"video": ((b, d.num_frames, d.height, d.width, 3), jnp.uint8),
            "audio": ((b, geom.num_samples, d.audio_channels), jnp.float32),
            "text_ids": ((b, length), jnp.int32), "text_mask": ((b, length), jnp.bool_)}
  if references.enabled(d):
    shapes.update(references.batch_fields(d, b, d.height, d.width))
  shapes.update(given.batch_fields(d, b, num_frames=d.num_frames, height=d.height,
                                   width=d.width, num_samples=geom.num_samples,
                                   channels=d.audio_channels, text_length=length))
  return {k: jax.ShapeDtypeStruct(s, dt, sharding=batch_sharding(mesh, len(s), axis_rules))
          for k, (s, dt) in shapes.items()}


def lower_train_step(config, devices):
  """Lowers the trainer's jitted step over `devices`; returns (lowered, mesh). Frozen
  components are shapes only (their published architectures where no converted folder is
  here) and their weights are sharded arguments, as in the trainer."""
  validate(config, abstract=True)
  _, mcfg = derive(config, abstract=True)
  mesh = make_mesh(config.mesh, devices=devices)
  axis_rules = rules(config)
  dp = data_parallel_size(mesh, axis_rules)
  if config.data.batch_size % dp:
    raise ConfigError("data.batch_size", f"{config.data.batch_size} does not divide over "
                      f"{dp} data-parallel shards of mesh {dict(mesh.shape)}")
  tx = make_optimizer(config)
  codecs, _ = make_codecs(config, abstract=True)
  graphdef, abstract = abstract_state(config, tx)
  shardings = state_shardings(abstract, mesh, axis_rules)
  state = with_shardings(abstract, shardings)
  batch = abstract_batch(config, mesh, axis_rules)
  frozen_sharding = frozen_shardings(codecs, mesh, axis_rules)
  frozen = with_shardings(codecs.frozen_params(), frozen_sharding)
  frozen, frozen_sharding = with_empty_latents(config, codecs, batch, frozen, frozen_sharding,
                                               mesh, mcfg.use_audio, abstract=True)
  if lora_on(config):   # the frozen base of a LoRA run, an argument like the encoders'
    base, base_sharding = lora_base_target(config, mesh, axis_rules)
    frozen, frozen_sharding = ({**frozen, LORA_BASE: base},
                               {**frozen_sharding, LORA_BASE: base_sharding})
  step = make_train_step(config, graphdef, codecs, tx, mcfg.use_audio)
  step = jit_train_step(step, shardings, {k: v.sharding for k, v in batch.items()},
                        frozen_sharding)
  with jax.set_mesh(mesh):
    return step.lower(state, batch, frozen), mesh


def analytic_flops(config) -> dict[str, int]:
  """perf/flops.py train FLOPs of the global batch: the whole step, and the same count with
  each scanned block stack taken once (what XLA's cost analysis counts, see below)."""
  geom, mcfg = derive(config, abstract=True)
  ref_frames, ref_audio = reference_slots(config)
  tokens = dict(batch=config.data.batch_size, video_tokens=geom.video_tokens,
                audio_tokens=geom.audio_tokens if mcfg.use_audio else 0,
                text_len=config.text.max_length,
                video_ref_tokens=ref_frames * geom.video_tokens
                // max(geom.video_grid[0], 1),
                audio_ref_tokens=ref_audio // mcfg.audio_patch_size)
  once = dataclasses.replace(mcfg, num_dual_blocks=1,
                             num_single_blocks=min(mcfg.num_single_blocks, 1))
  return {"step": mmdit_train_flops(mcfg, **tokens),
          "scan_bodies_once": mmdit_train_flops(once, **tokens)}


def parse_oom(message: str) -> tuple[int, int] | None:
  """(bytes needed, bytes available) from XLA's compile-time OOM message, or None."""
  units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  for pattern in _OOM:
    m = pattern.search(message)
    if m:
      return (int(float(m[1]) * units[m[2]]), int(float(m[3]) * units[m[4]]))
  return None


def memory_report(compiled) -> dict[str, int]:
  mem = compiled.memory_analysis()
  arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
  temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
  # Peak bytes of one device: inputs + outputs + XLA's scratch (activations, gathered
  # weights, gradients), less the outputs that reuse donated input buffers (the train state
  # is donated, so alias ~ the state's bytes, which would otherwise count twice). Code and
  # constants (a few MiB) are left out.
  return dict(argument_bytes=arg, output_bytes=out, temp_bytes=temp, alias_bytes=alias,
              bytes_per_device=arg + out + temp - alias)


def flops_report(compiled, config, flops: dict[str, int], num_slices: int = 1) -> dict[str, Any]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  raw = float(cost.get("flops", 0.0))
  # The figure is of the partitioned (one-device) program, and XLA counts a lax.scan body
  # ONCE, not times its trip count. The estimate scales it by the analytic ratio of the whole
  # step to the step with each scanned block stack taken once; it is exact when the compiled
  # count splits between layers and the rest as the analytic count does. It exceeds the
  # analytic count by the remat recompute (remat=full: the forward again, 4/3) and by what
  # the analytic count leaves out (norms, softmax, RoPE, optimizer: tens of % at tiny widths).
  scale = flops["step"] / flops["scan_bodies_once"] if config.model.scan_blocks else 1.0
  # Multi-slice compiles peel scan iterations (overlapping DCN collectives with compute), so
  # the body-once premise fails there; compile with model.scan_blocks=False for exact counts.
  note = ("one device; scan bodies counted once by XLA; the estimate multiplies by analytic "
          f"whole-step / bodies-once = {scale:.3g}")
  if num_slices > 1 and config.model.scan_blocks:
    note += "; multi-slice: XLA peels scan iterations, so this overestimates (scan_blocks=False)"
  return {"flops_compiled": raw, "flops_compiled_per_step_estimate": raw * scale,
          "flops_compiled_note": note}


def compile_report(config, topology: str, num_slices: int = 1, *,
                   batch_given: bool = True) -> dict[str, Any]:
  """Compiles the train step for `num_slices` x `topology`; returns the report that `main`
  prints. Several slices need `mesh.dcn_*` sizes whose product is `num_slices`. Without a
  given batch size the batch is one clip per data-parallel shard of the mesh (the report
  says so): a config's own batch is set for the topology it was written for."""
  devices = topology_devices(topology, num_slices)
  geom, _ = derive(config, abstract=True)
  note = None
  if not batch_given:
    validate(config, abstract=True)   # the mesh fields first, named if wrong
    dp = data_parallel_size(make_mesh(config.mesh, devices=devices), rules(config))
    config.data.batch_size = dp
    note = f"one clip per data-parallel shard ({dp}); no batch size was given"
  n, d = len(devices), config.data
  flops = analytic_flops(config)
  report: dict[str, Any] = {
      "config": config.name, "topology": topology, "num_slices": num_slices,
      "device_kind": devices[0].device_kind, "num_devices": n, "batch_size": d.batch_size,
      **({"batch_size_note": note} if note else {}),
      "resolution": [d.height, d.width],
      "num_frames": d.num_frames, "seconds": d.num_frames / d.fps,
      "tokens": {"video": geom.video_tokens, "audio": geom.audio_tokens,
                 "text": config.text.max_length},
      "attention": config.attention, "remat": config.model.remat,
      "hbm_bytes": hbm_bytes(devices[0]),
      "flops_analytic": flops["step"], "flops_analytic_per_device": flops["step"] / n}
  t0 = time.time()
  lowered, mesh = lower_train_step(config, devices)
  report["mesh"] = dict(mesh.shape)
  report["mesh_dcn"] = hybrid_mesh_shape(config.mesh, n)[1]
  report["lower_seconds"] = round(time.time() - t0, 2)
  t0 = time.time()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    report["compile_seconds"] = round(time.time() - t0, 2)
    oom = parse_oom(str(e))
    if oom:   # XLA's need (its HLO temporaries, or everything) and the HBM it had
      report["bytes_per_device"], report["hbm_bytes"] = oom
    report.update(fits=False, error=str(e).strip().splitlines()[0][:400])
    return report
  report["compile_seconds"] = round(time.time() - t0, 2)
  report.update(memory_report(compiled))
  # Compiling is not proof of fitting: libtpu 0.0.42.1 compiled a step with 109 GiB of
  # temporaries for a 95.74G v5p chip.
  hbm = report["hbm_bytes"]
  report["fits"] = hbm is None or report["bytes_per_device"] <= hbm
  report.update(flops_report(compiled, config, flops, num_slices))
  return report


def use_host_backend() -> None:
  """Set-up of a compile tool (this one, max_sequence): libtpu compiles for the topology, and
  the host's CPU backend traces; no search for a local TPU, and on a TPU-less host none of
  libtpu's start-up noise."""
  multihost.quiet_absent_tpu()
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")


def main(argv):
  del argv
  use_host_backend()
  config = flags.FLAGS.config
  if flags.FLAGS.batch_size:
    config.data.batch_size = flags.FLAGS.batch_size
  given = bool(flags.FLAGS.batch_size) or any(
      a.startswith("--config.data.batch_size") for a in sys.argv)
  try:
    report = compile_report(config, flags.FLAGS.topology, flags.FLAGS.num_slices,
                            batch_given=given)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps(report), flush=True)
  sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
  flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology, e.g. v5p:4x4x4 (64 chips)")
  flags.DEFINE_integer("num_slices", 1, "slices of `topology` joined by DCN (multi-slice); "
                       "set --config.mesh.dcn_* to match")
  flags.DEFINE_integer("batch_size", 0, "global batch; default (0, and no "
                       "--config.data.batch_size): one clip per data-parallel shard")
  flags.mark_flags_as_required(["config"])
  app.run(main)
