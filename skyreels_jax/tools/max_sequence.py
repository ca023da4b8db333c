"""The longest clip (whole seconds, with audio) one train step fits at a resolution.

  python -m skyreels_jax.tools.max_sequence --config=configs/hv13b.py --topology=v5p:4x4x4 \
      --height=720 --width=1280 [--sequence=4 --attention=ulysses] [--remat=full]
  python -m skyreels_jax.tools.max_sequence --config=configs/hv13b.py --analytic_only \
      --num_devices=8 --hbm_gib=72.5 --attention=cudnn --height=480 --width=832

Layout: FSDP over every device but the `--sequence` ones, one example per data-parallel shard.
The memory model (perf/memory.py) bisects for the answer; AOT compiles of the real step
(tools/aot.py) then home in from it, each next try XLA's bytes scaled to the HBM, until s fits
and s + 1 does not (--analytic_only: the model alone, e.g. for GPUs). A compile is given up
after --compile_timeout_s: long clips take XLA's TPU compiler many minutes. Prints a JSON line
last.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from typing import Any, Callable

import jax
from absl import app, flags

from skyreels_jax.config import ConfigError, derive, mesh_shape, validate
from skyreels_jax.models.attention import SEQUENCE_PARALLEL
from skyreels_jax.tools import aot
from skyreels_jax.perf.memory import train_memory_bytes

# What the result keeps of each compile's report (tools/aot.py): enough to see where XLA and
# the memory model part (arguments ~ the sharded state, temporaries ~ the activations).
_KEPT = ("fits", "bytes_per_device", "argument_bytes", "temp_bytes", "compile_seconds", "error")


def configure(config, *, height: int, width: int, seconds: int, num_devices: int,
              sequence: int = 1, attention: str | None = None, remat: str | None = None):
  """A copy of `config` at `seconds` of `height` x `width`, laid out as the module doc says."""
  if sequence < 1 or num_devices % sequence:
    raise ConfigError("mesh.sequence", f"{sequence} does not divide {num_devices} devices")
  attention = attention or config.attention
  if sequence > 1 and attention not in SEQUENCE_PARALLEL:
    raise ConfigError("attention", f"--sequence={sequence} shards the tokens, which "
                      f"attention={attention} does not handle: use one of {SEQUENCE_PARALLEL}")
  c = config.copy_and_resolve_references()
  c.attention, c.model.remat = attention, remat or c.model.remat
  # A D-second clip: D * fps frames, one more with an endpoint frame (Wan's 1 + 4k).
  c.data.height, c.data.width = height, width
  c.data.num_frames = round(seconds * c.data.fps) + int(c.data.endpoint_frame)
  c.mesh.update(dict(data=1, fsdp=-1, sequence=sequence, tensor=1, dcn_data=1, dcn_fsdp=1,
                     dcn_sequence=1, dcn_tensor=1))
  c.data.batch_size = num_devices // sequence     # one example per (data x fsdp) shard
  return c


def largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
  """Largest s in [0, hi] with fits(s) (monotone: true, then false), by bisection."""
  lo = 0                                 # invariant: fits(lo) or lo == 0; not fits(hi + 1)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
  return lo


def walk(compile_at: Callable[[int], dict], guess: int, hi: int,
         hbm_bytes: int | None = None) -> tuple[int, list[dict]]:
  """The largest s <= hi that compiles and fits while s + 1 does not, from the model's `guess`.
  The next try is XLA's bytes at s scaled to the HBM (memory ~ fixed + per second, so this
  lands at or below the answer), else one second on. A compile given up ("fits" None) ends
  the walk at the longest fitting clip, else at the guess less any that did not fit."""
  reports, good, bad, s = [], 0, hi + 1, min(max(guess, 1), hi)
  while good + 1 < bad:
    reports.append(compile_at(s))
    fits, used = reports[-1]["fits"], reports[-1].get("bytes_per_device")
    if fits is None:
      return good or min(guess, bad - 1), reports
    good, bad = (s, bad) if fits else (good, s)
    step = int(s * hbm_bytes / used) if hbm_bytes and used else s + (1 if fits else -1)
    s = min(max(step, good + 1), bad - 1)
  return good, reports


def max_sequence(config, *, height: int, width: int, num_devices: int, hbm_bytes: int,
                 sequence: int = 1, attention: str | None = None, remat: str | None = None,
                 max_seconds: int = 60, compile_at: Callable[[Any], dict] | None = None
                 ) -> dict[str, Any]:
  """The result line; `compile_at(config) -> report` as tools/aot.compile_report's, or None."""
  if max_seconds < 1:
    raise ConfigError("max_seconds", f"must be >= 1, got {max_seconds}")
  at = lambda s: configure(config, height=height, width=width, seconds=s,
                           num_devices=num_devices, sequence=sequence, attention=attention,
                           remat=remat)
  validate(at(1), abstract=True)   # shape / flag errors up front, naming the field
  model = lambda s: train_memory_bytes(at(s), num_devices)
  guess = largest_fitting(lambda s: model(s)["total"] <= hbm_bytes, max_seconds)
  seconds, compiles = (guess, []) if compile_at is None else walk(
      lambda s: {**compile_at(at(s)), "seconds": s}, guess, max_seconds, hbm_bytes)
  c = at(max(seconds, 1))
  geom, _ = derive(c, abstract=True)
  held = lambda n: n if seconds else 0          # seconds 0: no clip fits
  modelled = model(max(seconds, 1))
  xla = {r["seconds"]: r for r in compiles}
  answer = xla.get(max(seconds, 1), {})        # when nothing fits: XLA's need at 1 s
  return {
      "config": config.name, "num_devices": num_devices, "resolution": [height, width],
      "seconds": seconds, "capped": seconds == max_seconds,
      "num_frames": held(c.data.num_frames), "video_tokens": held(geom.video_tokens),
      "audio_tokens": held(geom.audio_tokens), "mesh": mesh_shape(c.mesh, num_devices),
      "batch_size": c.data.batch_size, "attention": c.attention, "remat": c.model.remat,
      "hbm_bytes": hbm_bytes,
      "bytes_per_device": answer.get("bytes_per_device") or round(modelled["total"]),
      "source": "analytic" if answer.get("fits") is None else "aot",
      # XLA found the answer to fit and one second more not to (or the answer is the cap)
      "boundary_checked": answer.get("fits") is not None and (
          seconds == max_seconds or xla.get(seconds + 1, {}).get("fits") is False),
      "model_seconds": guess, "model_bytes_per_device": round(modelled["total"]),
      "state_bytes_per_device": round(modelled["state"]),
      "compiles": [{k: r.get(k) for k in ("seconds",) + _KEPT} for r in compiles]}


def _compile_child(conn, config, topology: str):
  jax.config.update("jax_platforms", "cpu")
  try:
    conn.send(aot.compile_report(config, topology))
  except Exception as e:  # pylint: disable=broad-except
    conn.send({"raise": f"{type(e).__name__}: {e}"})


def compile_with_timeout(config, topology: str, timeout_s: float) -> dict:
  """tools/aot.compile_report in a fresh (spawned) process, killed after `timeout_s`: then
  "fits" is None. Other compile errors are raised here. Logs each compile to stderr."""
  ctx = multiprocessing.get_context("spawn")
  receive, send = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_compile_child, args=(send, config, topology), daemon=True)
  proc.start()
  report = (receive.recv() if receive.poll(timeout_s) else {
      "fits": None, "compile_seconds": timeout_s, "error": f"gave up after {timeout_s:g} s"})
  proc.kill()
  proc.join()
  if "raise" in report:
    raise RuntimeError(f"compile at {config.data.num_frames} frames: {report['raise']}")
  print(json.dumps({k: report.get(k) for k in ("num_frames",) + _KEPT}),
        file=sys.stderr, flush=True)
  return report


def check_flags(topology: str, analytic_only: bool, num_devices: int, hbm_gib: float):
  """Devices: a TPU topology's (compiled for, or modelled), else num_devices x hbm_gib."""
  if topology and (num_devices or hbm_gib):
    raise ValueError("--topology gives the devices and HBM: drop --num_devices, --hbm_gib")
  if not topology and not analytic_only:
    raise ValueError("give --topology, or --analytic_only --num_devices=N --hbm_gib=G (GPUs)")
  if not topology and (num_devices < 1 or hbm_gib <= 0):
    raise ValueError("--analytic_only needs --num_devices >= 1 and --hbm_gib > 0")


def main(_):
  f = flags.FLAGS
  aot.use_host_backend()
  compile_at, n, hbm = None, f.num_devices, int(f.hbm_gib * 2**30)
  where = {"hardware": f"{n} devices x {f.hbm_gib:g} GiB"}
  try:   # ConfigError is a ValueError
    check_flags(f.topology, f.analytic_only, f.num_devices, f.hbm_gib)
    if f.topology:
      devices = aot.topology_devices(f.topology)
      n, hbm, where = len(devices), aot.hbm_bytes(devices[0]), {"topology": f.topology}
      if hbm is None:
        raise ValueError(f"no HBM size known for {devices[0].device_kind} (tools/aot.py)")
      if not f.analytic_only:
        compile_at = lambda c: compile_with_timeout(c, f.topology, f.compile_timeout_s)
    line = max_sequence(f.config, height=f.height, width=f.width, num_devices=n,
                        hbm_bytes=hbm, sequence=f.sequence, attention=f.attention,
                        remat=f.remat, max_seconds=f.max_seconds, compile_at=compile_at)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps({"config": line.pop("config"), **where, **line}), flush=True)


if __name__ == "__main__":
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
  flags.DEFINE_string("topology", "", "TPU topology to compile for, e.g. v5p:4x4x4 (64 chips)")
  flags.DEFINE_integer("height", 480, "frame height in pixels")
  flags.DEFINE_integer("width", 832, "frame width in pixels")
  flags.DEFINE_integer("sequence", 1, "mesh.sequence (needs --attention=ulysses or ring)")
  flags.DEFINE_string("attention", None, "attention strategy (default: the config's)")
  flags.DEFINE_string("remat", None, "model.remat (default: the config's)")
  flags.DEFINE_integer("max_seconds", 60, "search no longer than this")
  flags.DEFINE_float("compile_timeout_s", 600, "give a compile up after this many seconds")
  flags.DEFINE_bool("analytic_only", False, "memory model only, no compile (GPUs)")
  flags.DEFINE_integer("num_devices", 0, "with --analytic_only: devices")
  flags.DEFINE_float("hbm_gib", 0.0, "with --analytic_only: usable memory per device, GiB")
  flags.mark_flags_as_required(["config"])
  app.run(main)
