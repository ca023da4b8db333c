"""benchmarks/cascade_flops.py at tiny sizes (--quick): the per-layer extrapolation of XLA's
compiled count, and its agreement with the analytic count of perf/flops.py."""

import json

import pytest

from benchmarks import cascade_flops as cf


@pytest.fixture(scope="module")
def quick_report():
  return cf.generation_report(cf.quick_plan(), log=lambda *_: None)


def test_extrapolation_equals_the_whole_unscanned_model(quick_report):
  """io + dual x per-dual + single x per-single from the (1,1), (2,1), (1,2) compiles is
  XLA's count of the whole unscanned model (XLA's dropping of the last block's unused text
  work is in io, so it is counted once, as in the whole model)."""
  plan = cf.quick_plan()
  stage = plan.stages[0]
  whole, _ = cf.compiled_flops(cf.stage_config(plan, stage), stage, plan.dual, plan.single)
  got = quick_report["stages"]["direct"]["compiled"]["forward"]
  assert got == pytest.approx(whole, rel=1e-6)


def test_compiled_matches_analytic(quick_report):
  """Every stage (dense, with keyframes, and VSA, whose attention count is
  vsa_attention_flops'): XLA counts a few % more, the elementwise ops (norms, softmax,
  RoPE, GELU) that the analytic count leaves out (6% at width 128)."""
  for name, s in quick_report["stages"].items():
    ratio = s["compiled"]["forward"] / s["analytic"]["forward"]
    assert 1.0 < ratio < 1.12, (name, ratio)
  totals = quick_report["totals"]
  assert (totals["compiled"]["cascade_over_direct"]
          == pytest.approx(totals["analytic"]["cascade_over_direct"], rel=0.02))


def test_stage_geometry(quick_report):
  """Tokens as the settings say: 2 s at 8 fps = 17 frames -> 5 latent frames of 16x16 ->
  5 x 8 x 8 tokens; the base at half size and fps (3 x 4 x 4) plus two 8 x 8 keyframes;
  VSA keeps 1/4 of the 2 x 2 x 2 cubes of 4x4x4 tokens; audio 2 s at 21.5 latents/s."""
  stages = quick_report["stages"]
  assert stages["direct"]["video_tokens"] == 5 * 8 * 8
  assert stages["cascade_base"]["video_tokens"] == 3 * 4 * 4 + 2 * 8 * 8
  refiner = stages["cascade_refiner"]
  assert (refiner["vsa_cubes"], refiner["vsa_top_k"], refiner["attention"]) == (8, 2, "vsa")
  assert {s["audio_tokens"] for s in stages.values()} == {44}
  json.dumps(quick_report)   # the results file is this report


def test_the_refiner_counts_its_own_steps(quick_report):
  """The cascade total counts the refiner at refiner_steps (8, from start_t) and the other
  stages at 30: cascade = 30 x base + 8 x refiner per CFG pass, and the full-step figure
  30 x both."""
  s, t = quick_report["stages"], quick_report["totals"]["compiled"]
  base, refiner = (s[n]["compiled"]["forward"] * 2 for n in ("cascade_base", "cascade_refiner"))
  assert quick_report["refiner_steps"] == 8
  assert t["cascade"] == pytest.approx(30 * base + 8 * refiner, rel=1e-9)
  assert t["cascade_full_step_refiner"] == pytest.approx(30 * (base + refiner), rel=1e-9)
  assert t["cascade_over_direct"] < t["full_step_refiner_over_direct"]
