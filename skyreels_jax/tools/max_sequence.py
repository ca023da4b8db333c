"""The longest clip (whole seconds, with audio) one train step fits at a resolution.

  python -m skyreels_jax.tools.max_sequence --config=configs/hv13b.py --topology=v5p:4x4x4 \
      --height=720 --width=1280 [--sequence=4 --attention=ulysses] [--remat=full]
  # GPUs, which cannot be compiled for here: the analytic memory model only
  python -m skyreels_jax.tools.max_sequence --config=configs/hv13b.py --analytic_only \
      --num_devices=8 --hbm_gib=72.5 --attention=cudnn --height=480 --width=832

Layout: FSDP over every device but the `--sequence` ones, one example per data-parallel
shard (the smallest global batch that keeps every device busy). Memory grows with the clip,
so the analytic model (tools/memory.py) bisects for the answer in milliseconds; AOT compiles
of the real step (tools/aot.py) then check it: the answer must fit and one second more must
not. The model is within ~10% of XLA, so the walk from its guess is a step or two. Prints one
JSON line last; "source" says whether XLA ("aot") or only the model ("analytic") backs it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from skyreels_jax.config import ConfigError, derive, mesh_shape, validate
from skyreels_jax.models.attention import SEQUENCE_PARALLEL
from skyreels_jax.tools.memory import train_memory_bytes

_G = 1 << 30


def configure(config, *, height: int, width: int, seconds: int, num_devices: int,
              sequence: int = 1, attention: str | None = None, remat: str | None = None):
  """A copy of `config` at `seconds` of `height` x `width`, laid out as the module doc says."""
  if sequence < 1 or num_devices % sequence:
    raise ConfigError("mesh.sequence", f"--sequence={sequence} does not divide "
                      f"{num_devices} devices")
  attention = attention or config.attention
  if sequence > 1 and attention not in SEQUENCE_PARALLEL:
    raise ConfigError("attention", f"--sequence={sequence} shards the tokens, which "
                      f"attention={attention} does not handle: use one of {SEQUENCE_PARALLEL}")
  c = config.copy_and_resolve_references()
  c.attention = attention
  if remat:
    c.model.remat = remat
  frames = seconds * c.data.fps
  if frames != int(frames):
    raise ConfigError("data.fps", f"{seconds} s at {c.data.fps} fps is not whole frames")
  c.data.height, c.data.width, c.data.num_frames = height, width, int(frames)
  c.mesh.update(dict(data=1, fsdp=-1, sequence=sequence, tensor=1, dcn_data=1, dcn_fsdp=1,
                     dcn_sequence=1, dcn_tensor=1))
  c.data.batch_size = num_devices // sequence     # one example per (data x fsdp) shard
  return c


def largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
  """Largest s in [0, hi] with fits(s), by bisection; fits must be monotone (true, then
  false). 0 means even 1 does not fit."""
  lo = 0                                 # invariant: fits(lo) or lo == 0; not fits(hi + 1)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
  return lo


def walk(compile_at: Callable[[int], dict], guess: int, hi: int) -> tuple[int, list[dict]]:
  """From the model's `guess`, the largest s <= hi whose compile fits, checked by compiling
  s and s + 1 (unless s == hi); one second at a time towards the boundary if the guess is
  wrong. Returns (seconds, the reports of every compile, in order)."""
  reports = []

  def fits(s):
    reports.append(compile_at(s))
    return reports[-1]["fits"]

  s = min(max(guess, 1), hi)
  if fits(s):
    while s < hi and fits(s + 1):
      s += 1
  else:
    s -= 1
    while s >= 1 and not fits(s):
      s -= 1
  return max(s, 0), reports


def max_sequence(config, *, height: int, width: int, num_devices: int, hbm_bytes: int,
                 sequence: int = 1, attention: str | None = None, remat: str | None = None,
                 max_seconds: int = 60, compile_at: Callable[[Any], dict] | None = None
                 ) -> dict[str, Any]:
  """The result line. `compile_at(config) -> report` with "fits" and "bytes_per_device"
  (tools/aot.compile_report for a topology); None: the analytic model alone."""
  if max_seconds < 1:
    raise ConfigError("max_seconds", f"must be >= 1, got {max_seconds}")
  at = lambda s: configure(config, height=height, width=width, seconds=s,
                           num_devices=num_devices, sequence=sequence, attention=attention,
                           remat=remat)
  validate(at(1))             # shape / flag errors up front, naming the field
  model = lambda s: train_memory_bytes(at(s), num_devices)
  guess = largest_fitting(lambda s: model(s)["total"] <= hbm_bytes, max_seconds)
  compiles: list[dict] = []
  seconds = guess
  if compile_at is not None:
    seconds, compiles = walk(lambda s: {"seconds": s, **compile_at(at(s))}, guess, max_seconds)
  c = at(max(seconds, 1))
  geom, _ = derive(c)
  held = lambda n: n if seconds else 0          # seconds 0: no clip fits
  modelled = model(max(seconds, 1))
  line = {
      "config": config.name, "num_devices": num_devices, "resolution": [height, width],
      "seconds": seconds, "capped": seconds == max_seconds,
      "num_frames": held(c.data.num_frames), "video_tokens": held(geom.video_tokens),
      "audio_tokens": held(geom.audio_tokens), "mesh": mesh_shape(c.mesh, num_devices),
      "batch_size": c.data.batch_size, "attention": c.attention, "remat": c.model.remat,
      "hbm_bytes": hbm_bytes, "bytes_per_device": round(modelled["total"]),
      "model_seconds": guess, "model_bytes_per_device": round(modelled["total"]),
      "state_bytes_per_device": round(modelled["state"]),
      "source": "analytic" if compile_at is None else "aot"}
  # XLA's figure at the answer (or, when nothing fits, its need at 1 s)
  at_answer = [r for r in compiles if r["seconds"] == max(seconds, 1)]
  if at_answer:
    line["bytes_per_device"] = at_answer[0].get("bytes_per_device")
  line["compiles"] = [{k: r.get(k) for k in ("seconds", "fits", "bytes_per_device",
                                             "compile_seconds", "error")} for r in compiles]
  return line


def _logged(report: dict) -> dict:
  """Each compile takes minutes at pod scale: say how it went as it happens."""
  keys = ("num_frames", "fits", "bytes_per_device", "compile_seconds", "error")
  print(json.dumps({k: report.get(k) for k in keys}), file=sys.stderr, flush=True)
  return report


def check_flags(topology: str, analytic_only: bool, num_devices: int, hbm_gib: float):
  """Where the devices come from: a TPU topology (compiled for, or with `analytic_only` its
  chip count and HBM in the model), else `num_devices` x `hbm_gib` in the model alone."""
  if topology and (num_devices or hbm_gib):
    raise ValueError("--topology gives the devices and their HBM: drop --num_devices and "
                     "--hbm_gib")
  if not topology and not analytic_only:
    raise ValueError("give --topology (AOT-checked), or --analytic_only with --num_devices "
                     "and --hbm_gib (e.g. GPUs)")
  if not topology and (num_devices < 1 or hbm_gib <= 0):
    raise ValueError("--analytic_only without --topology needs --num_devices >= 1 and "
                     "--hbm_gib > 0")


def main(argv):
  import jax
  from absl import app, flags
  from skyreels_jax.tools import aot
  del argv
  f = flags.FLAGS
  if "JAX_PLATFORMS" not in os.environ:   # the host backend: no search for a local TPU
    jax.config.update("jax_platforms", "cpu")
  try:
    check_flags(f.topology, f.analytic_only, f.num_devices, f.hbm_gib)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  compile_at = None
  if f.topology:
    devices = aot.topology_devices(f.topology)
    n, hbm, where = len(devices), aot.hbm_bytes(devices[0]), {"topology": f.topology}
    if not f.analytic_only:
      compile_at = lambda c: _logged(aot.compile_report(c, f.topology))
  else:
    n, hbm = f.num_devices, int(f.hbm_gib * _G)
    where = {"hardware": f"{n} devices x {f.hbm_gib:g} GiB"}
  try:
    line = max_sequence(f.config, height=f.height, width=f.width, num_devices=n,
                        hbm_bytes=hbm, sequence=f.sequence, attention=f.attention,
                        remat=f.remat, max_seconds=f.max_seconds, compile_at=compile_at)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  print(json.dumps({"config": line.pop("config"), **where, **line}), flush=True)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
  flags.DEFINE_string("topology", "", "TPU topology to compile for, e.g. v5p:4x4x4 (64 chips)")
  flags.DEFINE_integer("height", 480, "frame height in pixels")
  flags.DEFINE_integer("width", 832, "frame width in pixels")
  flags.DEFINE_integer("sequence", 1, "mesh.sequence (needs --attention=ulysses or ring)")
  flags.DEFINE_string("attention", None, "attention strategy (default: the config's)")
  flags.DEFINE_string("remat", None, "model.remat (default: the config's)")
  flags.DEFINE_integer("max_seconds", 60, "search no longer than this")
  flags.DEFINE_bool("analytic_only", False, "memory model only, no compile (GPUs)")
  flags.DEFINE_integer("num_devices", 0, "with --analytic_only: devices")
  flags.DEFINE_float("hbm_gib", 0.0, "with --analytic_only: usable memory per device, GiB")
  flags.mark_flags_as_required(["config"])
  app.run(main)
