"""The longest-clip search: bisection on the memory model, the compile walk around its guess
(with a stand-in compiler: a real pod-scale compile takes minutes; README has the numbers),
and the flag checks."""

import json
import os
import subprocess
import sys

import pytest

from configs import hv13b, small
from skyreels_jax.config import ConfigError, derive
from skyreels_jax.tools import max_sequence as ms
from skyreels_jax.perf.memory import train_memory_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
G = 1 << 30
HBM = int(95.74 * G)     # a v5p chip, as tools/aot.py counts it
SPLASH = dict(height=480, width=832, attention="splash", remat="full")


@pytest.mark.parametrize("boundary,hi", [(0, 60), (1, 60), (17, 60), (60, 60), (59, 60)])
def test_largest_fitting_finds_the_boundary(boundary, hi):
  asked = []
  fits = lambda s: asked.append(s) or s <= boundary
  assert ms.largest_fitting(fits, hi) == boundary
  assert len(asked) <= 6 and 0 not in asked      # log2(60) probes; 0 fits by definition


@pytest.mark.parametrize("guess,truth,tried", [
    (9, 9, [9, 10]),                # right: the answer fits, one second more does not
    (12, 9, [12, 11, 10, 9]),       # too long: down until one fits
    (6, 9, [6, 7, 8, 9, 10]),       # too short: up until one does not
    (3, 0, [3, 2, 1]),              # nothing fits
    (0, 2, [1, 2, 3]),              # the model said nothing fits; the compiler disagrees
])
def test_walk_compiles_the_answer_and_one_more(guess, truth, tried):
  seconds, reports = ms.walk(lambda s: {"seconds": s, "fits": s <= truth}, guess, hi=60)
  assert seconds == truth
  assert [r["seconds"] for r in reports] == tried


@pytest.mark.parametrize("guess,truth,slow,tried,answer", [
    (9, 9, 10, [9, 10], 9),         # fits, one more gives up: the fitting one (unbounded)
    (9, 9, 9, [9], 9),              # the guess itself gives up: the guess, unverified
    (12, 9, 11, [12, 11], 11),      # too long, then gives up: below the one that did not fit
])
def test_walk_ends_at_a_compile_given_up(guess, truth, slow, tried, answer):
  compile_at = lambda s: {"seconds": s, "fits": None if s == slow else s <= truth}
  seconds, reports = ms.walk(compile_at, guess, hi=60)
  assert seconds == answer and [r["seconds"] for r in reports] == tried


def test_compile_given_up_after_the_timeout():
  """The child (a spawned process importing JAX) is killed long before it compiles."""
  report = ms.compile_with_timeout(small.get_config(), "v5p:2x2x1", timeout_s=0.01)
  assert report["fits"] is None and "gave up" in report["error"]


def test_walk_jumps_by_the_compilers_bytes():
  """bytes = (10 + 10 s) GiB in 100 GiB: 9 s is the answer. From 20 s (210 GiB) the scaled
  guess is 9 s at once; then 10 s to close the boundary."""
  compile_at = lambda s: {"seconds": s, "fits": 10 + 10 * s <= 100,
                          "bytes_per_device": (10 + 10 * s) * G}
  seconds, reports = ms.walk(compile_at, 20, hi=60, hbm_bytes=100 * G)
  assert seconds == 9 and [r["seconds"] for r in reports] == [20, 9, 10]


def test_walk_stops_at_the_cap():
  seconds, reports = ms.walk(lambda s: {"fits": True}, 60, hi=60)
  assert seconds == 60 and len(reports) == 1


def test_analytic_answer_fits_and_one_second_more_does_not():
  line = ms.max_sequence(small.get_config(), num_devices=64, hbm_bytes=HBM, max_seconds=100,
                         **SPLASH)
  s = line["seconds"]
  at = lambda s: ms.configure(small.get_config(), seconds=s, num_devices=64, **SPLASH)
  assert train_memory_bytes(at(s), 64)["total"] <= HBM < train_memory_bytes(at(s + 1), 64)[
      "total"]
  assert 50 < s < 100 and not line["capped"]      # 63 s at 95.74 GiB: a minute of 480p
  geom, _ = derive(at(s), abstract=True)    # the published encoders' shapes
  assert (line["video_tokens"], line["audio_tokens"]) == (geom.video_tokens, geom.audio_tokens)
  assert line["num_frames"] == 16 * s + 1 and line["source"] == "analytic"   # Wan: 1 + 16 s
  assert line["mesh"] == {"data": 1, "fsdp": 64, "sequence": 1, "tensor": 1}
  assert line["batch_size"] == 64 and line["compiles"] == []
  assert line["bytes_per_device"] == line["model_bytes_per_device"] <= HBM


def test_search_stops_at_max_seconds():
  line = ms.max_sequence(small.get_config(), num_devices=64, hbm_bytes=HBM, max_seconds=30,
                         **SPLASH)
  assert line["seconds"] == 30 and line["capped"]


def test_compiles_override_the_model():
  """A compiler whose bytes grow in proportion to the clip and fill the HBM two seconds
  below the model's answer: the answer is the compiler's, with its bytes, and its bytes at
  the model's guess point straight at it."""
  guess = ms.max_sequence(hv13b.get_config(), num_devices=64, hbm_bytes=HBM,
                          **SPLASH)["seconds"]
  seconds = lambda c: (c.data.num_frames - 1) / 16     # 1 + 16 s frames (Wan)
  used = lambda c: int(HBM * seconds(c)) // (guess - 2)
  fake = lambda c: {"fits": used(c) <= HBM, "bytes_per_device": used(c), "compile_seconds": 0,
                    "seconds": seconds(c)}     # aot's float; the walk's int wins
  line = ms.max_sequence(hv13b.get_config(), num_devices=64, hbm_bytes=HBM, compile_at=fake,
                         **SPLASH)
  assert line["source"] == "aot" and line["model_seconds"] == guess
  assert line["boundary_checked"] is True
  assert line["seconds"] == guess - 2 and line["bytes_per_device"] == HBM
  assert [(r["seconds"], r["fits"]) for r in line["compiles"]] == [
      (guess, False), (guess - 2, True), (guess - 1, False)]
  assert all(type(r["seconds"]) is int for r in line["compiles"])


def test_unchecked_boundary_is_said():
  """The model's answer compiles and fits; one second more is given up."""
  kw = dict(num_devices=64, hbm_bytes=HBM, **SPLASH)
  guess = ms.max_sequence(hv13b.get_config(), **kw)["seconds"]
  fake = lambda c: {"fits": None if c.data.num_frames > 16 * guess + 1 else True,
                    "bytes_per_device": G}
  line = ms.max_sequence(hv13b.get_config(), compile_at=fake, **kw)
  assert (line["seconds"], line["source"], line["bytes_per_device"]) == (guess, "aot", G)
  assert line["boundary_checked"] is False and len(line["compiles"]) == 2


def test_state_alone_too_big_gives_zero_seconds():
  """hv13b on 8 GPUs: fp32 params + Adam + EMA + gradients are ~80 GB per GPU by themselves."""
  line = ms.max_sequence(hv13b.get_config(), num_devices=8, hbm_bytes=int(72.5 * G),
                         height=480, width=832, attention="cudnn", remat="full")
  assert line["seconds"] == 0 and line["video_tokens"] == 0 and line["num_frames"] == 0
  assert 70 * G < line["state_bytes_per_device"] < 80 * G < line["bytes_per_device"]


def test_sequence_parallel_layout():
  c = ms.configure(hv13b.get_config(), height=720, width=1280, seconds=2, num_devices=64,
                   sequence=4, attention="ulysses")
  assert (c.mesh.fsdp, c.mesh.sequence, c.data.batch_size) == (-1, 4, 16)


@pytest.mark.parametrize("kwargs,field", [
    (dict(sequence=4, attention="splash"), "attention"),     # splash does not shard tokens
    (dict(sequence=3, attention="ulysses"), "mesh.sequence"),  # 3 does not divide 64
    (dict(sequence=8, attention="ulysses"), "model.num_heads"),  # 12 heads over 8
    (dict(max_seconds=0), "max_seconds"),
    (dict(height=500), "data.height"),
])
def test_bad_combinations_name_the_field(kwargs, field):
  args = dict(height=480, width=832, num_devices=64, hbm_bytes=HBM, remat="full",
              attention="ulysses", **{"sequence": 1})
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    ms.max_sequence(small.get_config(), **{**args, **kwargs})


@pytest.mark.parametrize("topology,analytic_only,n,gib,match", [
    ("", False, 0, 0.0, "give --topology"),
    ("", True, 8, 0.0, "needs --num_devices"),
    ("", True, 0, 80.0, "needs --num_devices"),
    ("v5p:4x4x4", False, 8, 0.0, "drop --num_devices"),
])
def test_check_flags(topology, analytic_only, n, gib, match):
  with pytest.raises(ValueError, match=match):
    ms.check_flags(topology, analytic_only, n, gib)
  ms.check_flags("v5p:4x4x4", analytic_only, 0, 0.0)       # the topology alone is enough


def test_cli_analytic_only_prints_a_json_line():
  cmd = [sys.executable, "-m", "skyreels_jax.tools.max_sequence", "--config=configs/small.py",
         "--analytic_only", "--num_devices=8", "--hbm_gib=72.5", "--attention=cudnn",
         "--remat=full", "--height=720", "--width=1280"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["hardware"] == "8 devices x 72.5 GiB" and line["source"] == "analytic"
  assert line["seconds"] > 0 and line["bytes_per_device"] <= 72.5 * G
