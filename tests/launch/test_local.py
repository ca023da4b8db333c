"""launch.local: two processes of four CPU devices train exactly like one process of eight, and
their checkpoint restores onto another mesh; a preemption saves one step on every process, a
dead process is noticed by the other, and --max_restarts finishes the run."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from conftest import restore_train_state, small_run_config
from launch import local
from run_args import small_run_args
from skyreels_jax.train.events import read_events

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _children(pid):
  """{process id: os pid} of launch.local's children."""
  out = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      if ppid != pid:
        continue
      with open(f"/proc/{entry}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
      out[int(env[b"SKYREELS_PROCESS_ID"])] = int(entry)
    except (OSError, KeyError, ValueError, IndexError):
      continue
  return out


class _Launch:
  """launch.local in the background, its output lines timestamped."""

  def __init__(self, *flags_and_args):
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=4",
         *flags_and_args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1)
    self.lines = []
    self.thread = threading.Thread(target=self._read, daemon=True)
    self.thread.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append((time.time(), line.rstrip("\n")))

  def wait_for(self, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
      for t, line in list(self.lines):
        if predicate(line):
          return t, line
      if self.proc.poll() is not None:
        break
      time.sleep(0.05)
    raise AssertionError("not seen; output:\n" + "\n".join(l for _, l in self.lines[-60:]))

  def finish(self, timeout=300):
    code = self.proc.wait(timeout=timeout)
    self.thread.join(timeout=10)
    return code, "\n".join(l for _, l in self.lines)


@pytest.fixture(scope="module")
def two_process_run(synthetic_data, long_run, tmp_path_factory):
  """2 x 4 processes train long_run's 12 steps through two faults: SIGTERM to the launcher
  (every process saves one step, exit 75), then process 1 killed with the other left to
  notice it (heartbeat 10 s) and --max_restarts finishing the run."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  # data=-1 with dcn_data=2: each process is one DCN granule (a host of a GPU cluster), the
  # data axis spans both, which is the 1 x 8 run's data axis (8) device for device.
  args = ["--", *small_run_args(synthetic_data, workdir), "--config.mesh.dcn_data=2",
          f"--config.train.steps={long_run[1].train.steps}"]
  run = _Launch("--max_restarts=2", *args)
  run.wait_for(lambda l: l.startswith("[p0] step 3:"))
  run.proc.send_signal(signal.SIGTERM)
  preempt_code, preempt_out = run.finish()
  preempted = {l.split()[0]: int(l.split()[4].rstrip(";")) for l in preempt_out.splitlines()
               if " preempted at step " in l}

  run = _Launch("--max_restarts=1", "--no_stop_siblings", "--heartbeat_timeout_s=10", *args)
  run.wait_for(lambda l: l.startswith(f"[p0] step {preempted.get('[p0]', 0) + 2}:"))
  os.kill(_children(run.proc.pid)[1], signal.SIGKILL)
  killed = time.time()
  noticed, _ = run.wait_for(lambda l: l.startswith("[launch.local] process 0 exited"))
  code, out = run.finish()
  return dict(workdir=workdir, preempt_code=preempt_code, preempt_out=preempt_out,
              preempted=preempted, code=code, out=out, notice_s=noticed - killed)


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_train_like_one(long_run, two_process_run, synthetic_data):
  one, config = long_run
  two, out = two_process_run["workdir"], two_process_run["out"]
  assert two_process_run["code"] == 0, out[-3000:]
  # The command line rebuilt the in-process config exactly.
  want = small_run_config(synthetic_data, **{"train.steps": config.train.steps})
  want.mesh.dcn_data = 2
  with open(os.path.join(two, "config.json")) as f:
    assert json.load(f) == json.loads(want.to_json_best_effort())
  lines = out.splitlines()
  # Console output from process 0 only; both processes' logs are streamed.
  assert any(l.startswith("[p0] mesh:") and "over 8 devices (2 processes), slices over DCN "
             "{'data': 2}" in l for l in lines), out[-3000:]
  assert "[p0] done: step 12 loss" in out and "[p0] step 12: " in out
  assert not any(l.startswith(("[p1] mesh:", "[p1] step ", "[p1] done")) for l in lines)
  assert any(l.startswith("[p1] ") for l in lines)
  # Interrupted twice, yet every step logged once, with the losses of one process.
  a, b = _metrics(one), _metrics(two)
  assert [r["step"] for r in b] == list(range(1, 13))
  for ra, rb in zip(a, b):
    for key in ("loss", "loss_video", "loss_audio", "grad_norm", "lr", "bad_records"):
      assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-12), (rb["step"], key)
  # Each process saved its own data-iterator position.
  data = sorted(os.listdir(os.path.join(two, "checkpoints", "12", "data")))
  assert [d for d in data if d.startswith("process_")] == ["process_0-of-2.json",
                                                            "process_1-of-2.json"]


def test_a_preemption_saves_one_step_on_every_process(two_process_run):
  """SIGTERM to the launcher reaches both processes; they agree on the step, save it (each
  its data position) and exit 75; the launcher does not restart after its own signal."""
  run = two_process_run
  assert run["preempt_code"] == 75, run["preempt_out"][-3000:]
  assert set(run["preempted"]) == {"[p0]", "[p1]"}
  assert len(set(run["preempted"].values())) == 1
  assert "restart 1 of" not in run["preempt_out"]
  saves = [(e["step"], e["reason"]) for e in read_events(run["workdir"]) if e["event"] == "save"]
  assert (run["preempted"]["[p0]"], "preemption") in saves


def test_a_dead_process_is_noticed_and_the_run_restarts(two_process_run):
  run = two_process_run
  assert run["notice_s"] < 10 + 20, run["notice_s"]   # heartbeat timeout + reporting
  assert "stopped sending heartbeats" in run["out"]
  assert "process 1 exited with status 137; the others are left to notice it" in run["out"]
  assert "restart 1 of 1" in run["out"] and run["code"] == 0
  # Whatever the killed start was saving was never committed: the restart restored a whole
  # checkpoint, with no fallback.
  events = read_events(run["workdir"])
  restores = [e["step"] for e in events if e["event"] == "restore"]
  assert len(restores) == 2 and restores[0] == run["preempted"]["[p0]"]
  assert not [e for e in events if e["event"] == "fallback"]


@pytest.mark.parametrize("mesh", [dict(data=4, fsdp=2), dict(data=1, fsdp=8)])
def test_two_process_checkpoint_restores_on_another_mesh(long_run, two_process_run,
                                                         synthetic_data, mesh):
  one, config = long_run
  two = two_process_run["workdir"]
  other = small_run_config(synthetic_data, **{"train.steps": 12})
  other.mesh.update(mesh)
  a = restore_train_state(one, config, 12)
  b = restore_train_state(two, other, 12)
  leaf = jax.tree.leaves(b["params"])[0]
  assert dict(leaf.sharding.mesh.shape)["fsdp"] == mesh["fsdp"]
  assert int(b["step"]) == 12
  # Not bit-identical: gloo sums the gradients across processes in another order than one
  # process does. Adam turns such last-bit differences of near-zero gradients into update
  # differences of ~lr * 1e-4 (lr = 1e-3), and on some CPUs up to ~lr * 2e-3 (measured:
  # 1.6e-6 on one value of 36,864). A wrong restore or resharding differs by ~lr per step.
  for key in ("params", "ema", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=5e-6)


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


def test_restarts_stop_on_usage_errors_and_need_a_valid_count(tmp_path, monkeypatch):
  (tmp_path / "usage.py").write_text("import sys\nprint('bad flag', flush=True)\nsys.exit(2)\n")
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  out = io.StringIO()
  assert local.launch([], num_processes=1, devices_per_process=1, module="usage", out=out,
                      max_restarts=3) == 2
  assert out.getvalue().count("[p0] bad flag") == 1 and "restart" not in out.getvalue()
  (tmp_path / "crash.py").write_text("import sys\nprint('crash', flush=True)\nsys.exit(1)\n")
  out = io.StringIO()
  assert local.launch([], num_processes=1, devices_per_process=1, module="crash", out=out,
                      max_restarts=2) == 1
  assert out.getvalue().count("[p0] crash") == 3 and "restart 2 of 2" in out.getvalue()
  with pytest.raises(ValueError, match="max_restarts"):
    local.launch([], max_restarts=-1)
