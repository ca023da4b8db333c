"""FLOPs of one 1080p, 32 fps, 15 s generation with audio: the base model directly vs the
efficiency cascade (SPEC section 5), from XLA's compiled cost analysis, with the analytic
count of skyreels_jax/perf/flops.py beside it as a cross-check.

The three settings. Where the paper gives no numbers these are our choices:
  direct    the base model (configs/hv13b.py) at 1088x1920 (1080p padded to the 16-pixel
            grid: 8x VAE x 2x patch), 32 fps, 15 s: 481 frames -> 121 latent frames of
            136x240 -> 121 x 68 x 120 = 987,360 video tokens, dense attention, plus the audio
            track (15 s at 44100 / 2048 = 21.5 latents/s: 323 tokens).
  base      cascade stage 1: 544x960 at 16 fps, 15 s (241 frames -> 61 latent frames of
            68x120 -> 61 x 34 x 60 tokens) plus K=4 high-res keyframes at 1088x1920 (68 x 120
            tokens each) at evenly spaced latent frames, plus the audio; dense attention.
  refiner   cascade stage 2: 1088x1920 at 32 fps, 15 s (121 latent frames), the same MMDiT
            with Video Sparse Attention (cubes of 4x4x4 tokens, top-K keeps 1/4 of the cubes),
            plus the audio; its input is the same 2C+1 channel layout.
Text: 256 tokens of width 3584 everywhere; batch 1; bfloat16 compute, as hv13b.

A generation costs steps x 2 (CFG: conditional + unconditional pass) x forward per stage. The
direct generation and the cascade base take 30 steps. The refiner starts from the upsampled
base output partly noised (refiner.start_t = 0.5, tasks/refiner.start_path) and takes 8
steps (--refiner_steps); the report gives the full-step refiner's figure (30 steps) beside
it. benchmarks/refiner_start.py measures what the fewer steps cost in quality.

How it is counted. Nothing is executed and nothing is allocated: the forward is lowered on
jax.ShapeDtypeStructs and compiled for the CPU, and `cost_analysis()["flops"]` is XLA's count
of the optimised program (matmuls as 2 x multiply-adds, plus one per elementwise op). XLA
counts a lax.scan body once, so the model is built unscanned with few layers, as
tools/aot.py explains: compiles with (dual, single) blocks = (1, 1), (2, 1), (1, 2) give
io + dual + single, one dual block and one single block; the forward is then
io + 20 dual + 40 single. Each compile is at the real token count (the program's size does
not grow with the shapes), so the 1M-token dense attention is compiled as it is.

  python benchmarks/cascade_flops.py            # the real sizes (~1 min on 2 CPU cores)
  python benchmarks/cascade_flops.py --quick    # the same code path at tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

# Nothing runs, so the quality of the CPU code is irrelevant: XLA's slow backend passes only
# add compile time. HLO-level passes (what cost analysis sees) are unaffected.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_cpu_use_fusion_emitters=false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from skyreels_jax.config import derive  # noqa: E402
from skyreels_jax.models.attention.vsa import num_cubes, vsa_attention_flops  # noqa: E402
from skyreels_jax.models.mmdit import MMDiT  # noqa: E402
from skyreels_jax.perf.flops import mmdit_forward_flops  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "cascade_flops.json")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One model call of a generation: its video geometry and attention."""
  name: str
  height: int
  width: int
  fps: float
  seconds: float
  keyframes: int = 0                    # high-res keyframes generated jointly (base stage)
  keyframe_hw: tuple[int, int] = (0, 0)  # their pixel size
  vsa_keep: float = 0.0                 # > 0: VSA keeping this fraction of the key cubes


@dataclasses.dataclass(frozen=True)
class Plan:
  stages: tuple[Stage, ...]             # stages[0] is the direct generation, the rest cascade
  width: int                            # the real model's size, or a tiny one (--quick)
  heads: int
  dual: int
  single: int
  text_len: int
  rope_axes_dim: tuple[int, int, int]
  steps: int = 30
  cfg_passes: int = 2
  refiner_steps: int = 8                # from refiner.start_t (the cheaper cascade)


def full_plan() -> Plan:
  hd, key = (1088, 1920), dict(keyframes=4, keyframe_hw=(1088, 1920))
  return Plan(stages=(Stage("direct", *hd, 32.0, 15.0),
                      Stage("cascade_base", 544, 960, 16.0, 15.0, **key),
                      Stage("cascade_refiner", *hd, 32.0, 15.0, vsa_keep=0.25)),
              width=3072, heads=24, dual=20, single=40, text_len=256,
              rope_axes_dim=(16, 56, 56))


def quick_plan() -> Plan:
  """The same stages at tiny sizes: 128x128 (5 x 8 x 8 tokens: 8 VSA cubes), 2 s."""
  hd, key = (128, 128), dict(keyframes=2, keyframe_hw=(128, 128))
  return Plan(stages=(Stage("direct", *hd, 8.0, 2.0),
                      Stage("cascade_base", 64, 64, 4.0, 2.0, **key),
                      Stage("cascade_refiner", *hd, 8.0, 2.0, vsa_keep=0.25)),
              width=128, heads=2, dual=2, single=3, text_len=16, rope_axes_dim=(16, 24, 24))


def stage_config(plan: Plan, stage: Stage):
  """configs/hv13b.py at the stage's geometry and the plan's model size."""
  from configs import hv13b
  c = hv13b.get_config()
  c.data.height, c.data.width, c.data.fps = stage.height, stage.width, stage.fps
  c.data.num_frames = round(stage.fps * stage.seconds) + 1   # endpoint_frame: 1 + fps x D
  c.model.width, c.model.num_heads = plan.width, plan.heads
  c.model.num_dual_blocks, c.model.num_single_blocks = plan.dual, plan.single
  c.model.rope_axes_dim = plan.rope_axes_dim
  c.model.scan_blocks = False      # XLA would count a scanned body once
  c.model.remat = "none"           # sampling: no backward
  c.text.max_length = plan.text_len
  if stage.vsa_keep:
    geom, mcfg = derive(c, abstract=True)
    t, h, w = geom.video_grid
    grid = (t // mcfg.patch_size_t, h // mcfg.patch_size, w // mcfg.patch_size)
    c.attention = "vsa"
    c.model.vsa_top_k = max(1, int(num_cubes(grid, tuple(c.model.vsa_cube)) * stage.vsa_keep))
  return c


def abstract_inputs(config, stage: Stage):
  """The forward's arguments as ShapeDtypeStructs (latents; timesteps in model units)."""
  geom, mcfg = derive(config, abstract=True)
  s, f32 = jax.ShapeDtypeStruct, jnp.float32
  cv, ca = mcfg.video_latent_channels, mcfg.audio_latent_channels
  t, h, w = geom.video_grid
  args = dict(video=s((1, t, h, w, 2 * cv + 1), f32), video_timestep=s((1,), f32),
              text=s((1, config.text.max_length, mcfg.text_dim), jnp.bfloat16),
              text_mask=s((1, config.text.max_length), jnp.bool_),
              audio=s((1, geom.audio_length, 2 * ca + 1), f32), audio_timestep=s((1,), f32))
  times = ()
  if stage.keyframes:
    kh, kw = (x // 8 for x in stage.keyframe_hw)   # the Wan VAE's 8x spatial factor
    args["keyframes"] = s((1, stage.keyframes, kh, kw, 2 * cv + 1), f32)
    times = tuple(round(i * (t - 1) / max(stage.keyframes - 1, 1))
                  for i in range(stage.keyframes))
  return args, times


def compiled_flops(config, stage: Stage, dual: int, single: int) -> tuple[float, float]:
  """(XLA's FLOPs, compile seconds) of the unscanned forward with dual/single blocks."""
  c = config.copy_and_resolve_references()
  c.model.num_dual_blocks, c.model.num_single_blocks = dual, single
  _, mcfg = derive(c, abstract=True)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: MMDiT(mcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  args, times = abstract_inputs(c, stage)

  def forward(state, args):
    return nnx.merge(graphdef, state)(**args, keyframe_times=times)

  t0 = time.time()
  cost = jax.jit(forward).lower(state, args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]), time.time() - t0


def analytic_flops(config, stage: Stage) -> dict[str, int]:
  """perf/flops.py's forward. Keyframes are extra video tokens through every block and the
  head; VSA replaces each video self-attention's dense count by vsa_attention_flops's."""
  geom, mcfg = derive(config, abstract=True)
  t, h, w = geom.video_grid
  p = mcfg.patch_size
  key = stage.keyframes * (stage.keyframe_hw[0] // 8 // p) * (stage.keyframe_hw[1] // 8 // p)
  dense = mmdit_forward_flops(mcfg, batch=1, video_tokens=geom.video_tokens + key,
                              text_len=config.text.max_length, audio_tokens=geom.audio_tokens)
  out = {"forward": dense, "video_tokens": geom.video_tokens + key,
         "audio_tokens": geom.audio_tokens}
  if stage.vsa_keep:
    grid = (t // mcfg.patch_size_t, h // p, w // p)
    full, sparse = vsa_attention_flops(grid, mcfg.attention.vsa_cube, config.model.vsa_top_k,
                                       mcfg.num_heads, mcfg.head_dim, config.text.max_length)
    layers = mcfg.num_dual_blocks + mcfg.num_single_blocks
    out["forward"] = dense - layers * (full - sparse)
    out.update(vsa_top_k=config.model.vsa_top_k, vsa_cubes=num_cubes(grid, mcfg.attention.vsa_cube),
               video_attention_dense=full, video_attention_sparse=sparse)
  return out


def stage_report(plan: Plan, stage: Stage, log=print) -> dict:
  """Compiled and analytic forward FLOPs of one stage, by per-layer extrapolation."""
  config = stage_config(plan, stage)
  runs, seconds = {}, {}
  for layers in ((1, 1), (2, 1), (1, 2)):
    runs[layers], seconds[layers] = compiled_flops(config, stage, *layers)
    log(f"  {stage.name} (dual, single) = {layers}: {runs[layers] / 1e12:.4g} TFLOPs, "
        f"compiled in {seconds[layers]:.1f} s")
  dual = runs[2, 1] - runs[1, 1]
  single = runs[1, 2] - runs[1, 1]
  # XLA drops the last block's unused text-stream work, so `io` is the embeddings and heads
  # less that saving; with VSA the text queries' dense attention over all 1M keys is a
  # separate matmul it drops whole, which can make `io` negative. The sum is still exactly
  # the whole unscanned model's count (tests/tools/test_cascade_flops.py).
  io = runs[1, 1] - dual - single
  report = analytic_flops(config, stage)
  report.update(
      resolution=[stage.height, stage.width], fps=stage.fps, seconds=stage.seconds,
      keyframes=stage.keyframes, attention=config.attention,
      compiled={"io_less_last_block_text": io, "per_dual": dual, "per_single": single,
                "forward": io + plan.dual * dual + plan.single * single},
      compile_seconds={f"{d},{s}": round(v, 1) for (d, s), v in seconds.items()})
  report["analytic"] = {"forward": report.pop("forward")}
  return report


def generation_report(plan: Plan, log=print) -> dict:
  stages = {s.name: stage_report(plan, s, log) for s in plan.stages}
  direct, cascade = plan.stages[0].name, [s.name for s in plan.stages[1:]]
  refiner = cascade[-1]
  totals = {}
  for kind in ("compiled", "analytic"):
    fwd = {n: stages[n][kind]["forward"] * plan.cfg_passes for n in stages}
    d = plan.steps * fwd[direct]
    full = plan.steps * sum(fwd[n] for n in cascade)
    c = full - (plan.steps - plan.refiner_steps) * fwd[refiner]
    totals[kind] = {"direct": d, "cascade": c, "cascade_over_direct": c / d,
                    "cascade_full_step_refiner": full,
                    "full_step_refiner_over_direct": full / d}
  return {"steps_per_stage": plan.steps, "refiner_steps": plan.refiner_steps,
          "cfg_passes": plan.cfg_passes,
          "model": {"width": plan.width, "heads": plan.heads, "dual_blocks": plan.dual,
                    "single_blocks": plan.single, "text_len": plan.text_len},
          "stages": stages, "totals": totals}


def print_table(report: dict, log=print):
  log(f"\nforward TFLOPs per stage (x {report['steps_per_stage']} steps x "
      f"{report['cfg_passes']} CFG passes per generation):")
  log(f"  {'stage':<16} {'video tok':>10} {'audio tok':>9} {'compiled':>10} {'analytic':>10}"
      f" {'comp/anal':>9}")
  for name, s in report["stages"].items():
    c, a = s["compiled"]["forward"], s["analytic"]["forward"]
    log(f"  {name:<16} {s['video_tokens']:>10,} {s['audio_tokens']:>9,} {c / 1e12:>10.4g} "
        f"{a / 1e12:>10.4g} {c / a:>9.3f}")
  for kind, t in report["totals"].items():
    log(f"  generation ({kind}): direct {t['direct'] / 1e15:.4g} PFLOPs, cascade "
        f"{t['cascade'] / 1e15:.4g} PFLOPs ({report['refiner_steps']} refiner steps), "
        f"cascade / direct = {t['cascade_over_direct']:.3f}, direct / cascade = "
        f"{1 / t['cascade_over_direct']:.2f}; with a full-step refiner "
        f"{t['full_step_refiner_over_direct']:.3f}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny sizes, same code path (tests)")
  p.add_argument("--refiner_steps", type=int, default=8,
                 help="refiner steps from refiner.start_t (the direct and base take 30)")
  p.add_argument("--out", default=None, help=f"JSON output (default: {RESULTS} unless --quick)")
  args = p.parse_args(argv)
  t0 = time.time()
  plan = dataclasses.replace(quick_plan() if args.quick else full_plan(),
                             refiner_steps=args.refiner_steps)
  report = generation_report(plan)
  report.update(jax_version=jax.__version__, backend="CPU compile (no execution)",
                quick=args.quick, run_seconds=round(time.time() - t0, 1),
                cpu_count=os.cpu_count(), load_average=[round(x, 2) for x in os.getloadavg()])
  print_table(report)
  print(f"run time {report['run_seconds']} s (jax {jax.__version__}, CPU compile, nothing run)")
  t = report["totals"]["compiled"]
  out = args.out or (None if args.quick else RESULTS)
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      json.dump(report, f, indent=1)
  print(f"ratio={t['cascade_over_direct']:.4f} (cascade / direct, compiled FLOPs; refiner "
        f"{report['refiner_steps']} steps from start_t; full-step refiner "
        f"{t['full_step_refiner_over_direct']:.4f})", flush=True)
  return report


if __name__ == "__main__":
  main()
