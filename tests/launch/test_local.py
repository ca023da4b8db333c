"""launch.local: two processes of four CPU devices train exactly like one process of eight, and
their checkpoint restores onto another mesh."""

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import restore_train_state, small_run_config
from launch import local
from run_args import small_run_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def two_process_run(synthetic_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  # data=-1 with dcn_data=2: each process is one DCN granule (a host of a GPU cluster), the
  # data axis spans both, which is the 1 x 8 run's data axis (8) device for device.
  proc = subprocess.run(
      [sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=4",
       "--", *small_run_args(synthetic_data, workdir), "--config.mesh.dcn_data=2"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-5000:]
  return workdir, proc.stdout


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_train_like_one(trained_run, two_process_run, synthetic_data):
  one, config, _ = trained_run
  two, out = two_process_run
  # The command line rebuilt the in-process config exactly.
  want = small_run_config(synthetic_data)
  want.mesh.dcn_data = 2
  with open(os.path.join(two, "config.json")) as f:
    assert json.load(f) == json.loads(want.to_json_best_effort())
  lines = out.splitlines()
  # Console output from process 0 only; both processes' logs are streamed.
  assert any(l.startswith("[p0] mesh:") and "over 8 devices (2 processes), slices over DCN "
             "{'data': 2}" in l for l in lines), out[-3000:]
  assert "[p0] done: step 4 loss" in out and "[p0] step 4: " in out
  assert not any(l.startswith(("[p1] mesh:", "[p1] step ", "[p1] done")) for l in lines)
  assert any(l.startswith("[p1] ") for l in lines)
  a, b = _metrics(one), _metrics(two)
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    for key in ("loss", "loss_video", "loss_audio", "grad_norm", "lr", "bad_records"):
      assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-12), (rb["step"], key)
  # Each process saved its own data-iterator position.
  data = sorted(os.listdir(os.path.join(two, "checkpoints", "4", "data")))
  assert [d for d in data if d.startswith("process_")] == ["process_0-of-2.json",
                                                            "process_1-of-2.json"]


@pytest.mark.parametrize("mesh", [dict(data=4, fsdp=2), dict(data=1, fsdp=8)])
def test_two_process_checkpoint_restores_on_another_mesh(trained_run, two_process_run,
                                                         synthetic_data, mesh):
  one, config, _ = trained_run
  two, _ = two_process_run
  other = small_run_config(synthetic_data)
  other.mesh.update(mesh)
  a = restore_train_state(one, config, 4)
  b = restore_train_state(two, other, 4)
  leaf = jax.tree.leaves(b["params"])[0]
  assert dict(leaf.sharding.mesh.shape)["fsdp"] == mesh["fsdp"]
  assert int(b["step"]) == 4
  # Not bit-identical: gloo sums the gradients across processes in another order than one
  # process does. Adam turns such last-bit differences of near-zero gradients into update
  # differences of up to ~lr * 1e-4 (lr = 1e-3).
  for key in ("params", "ema", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_child_env_keeps_xla_flags_and_sets_the_cluster():
  env = local.child_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1",
                         "JAX_COMPILATION_CACHE_DIR": "/c"}, process_id=1, num_processes=3,
                        port=1234, devices_per_process=2)
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/c" and env["JAX_PLATFORMS"] == "cpu"
  assert (env["SKYREELS_COORDINATOR"], env["SKYREELS_NUM_PROCESSES"],
          env["SKYREELS_PROCESS_ID"]) == ("127.0.0.1:1234", "3", "1")


def test_a_failing_process_stops_the_others(tmp_path, monkeypatch):
  (tmp_path / "one_fails.py").write_text(textwrap.dedent("""
      import os, sys, time
      if os.environ["SKYREELS_PROCESS_ID"] == "1":
        print("failing", flush=True)
        sys.exit(3)
      print("waiting", flush=True)
      time.sleep(120)
  """))
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  out = io.StringIO()
  start = time.time()
  status = local.launch([], num_processes=2, devices_per_process=1, module="one_fails", out=out)
  assert status == 3 and time.time() - start < 30
  text = out.getvalue()
  assert "[p1] failing" in text and "[p0] waiting" in text
  assert "process 1 exited with status 3" in text
