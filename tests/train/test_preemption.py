"""The train command under faults: SIGTERM saves the current step and exits 75; kill -9 at
random moments (grain workers and async saves on) loses nothing; the goodput tool reads it."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import restore_train_state
from skyreels_jax.train.events import read_events
from skyreels_jax.train.preemption import EXIT_PREEMPTED, PreemptionWatch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch"))
from run_args import small_run_args  # noqa: E402

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12                        # the long_run fixture's
OVERRIDES = {"train.steps": STEPS, "data.num_workers": 1}   # workers change no example


def _args(data, workdir):
  return small_run_args(data, workdir) + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _start(data, workdir, log):
  return subprocess.Popen([sys.executable, "-m", "skyreels_jax.train", *_args(data, workdir)],
                          cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)   # its own group: the grain workers too


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  for line in open(path):
    try:
      steps.append(json.loads(line)["step"])
    except json.JSONDecodeError:
      pass
  return steps


def _wait_for_step(proc, workdir, step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if any(s >= step for s in _logged_steps(workdir)):
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached (exit {proc.poll()})")


def test_sigterm_and_kills_lose_nothing(synthetic_data, long_run, tmp_path):
  workdir, log_path = str(tmp_path / "run"), str(tmp_path / "log.txt")
  rng = random.Random()
  with open(log_path, "w") as log:
    # 1. SIGTERM (to the whole group, as a scheduler does): the current step is saved.
    proc = _start(synthetic_data, workdir, log)
    _wait_for_step(proc, workdir, 3)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED
  out = open(log_path).read()
  [line] = [l for l in out.splitlines() if l.startswith("preempted at step")]
  preempted = int(line.split()[3].rstrip(";"))
  assert line.endswith("; rerun the same command to resume")
  assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == preempted
  assert [e["step"] for e in read_events(workdir) if e["event"] == "preempted"] == [preempted]
  assert _logged_steps(workdir)[-1] == preempted

  # 2. kill -9 at random moments after some progress (during steps, async saves, logging).
  moments = []
  for _ in range(2):
    with open(log_path, "a") as log:
      proc = _start(synthetic_data, workdir, log)
      _wait_for_step(proc, workdir, min(max(_logged_steps(workdir)) + 1, STEPS - 1))
      moments.append(round(rng.uniform(0.0, 1.5), 2))
      time.sleep(moments[-1])
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait(timeout=60)
  # 3. The same command to the end.
  with open(log_path, "a") as log:
    proc = _start(synthetic_data, workdir, log)
    assert proc.wait(timeout=300) == 0, (moments, open(log_path).read()[-3000:])

  # Every step logged exactly once; the parameters of an uninterrupted run.
  assert _logged_steps(workdir) == list(range(1, STEPS + 1)), moments
  # A quiet console: library INFO logs (orbax's checkpointing) in WORKDIR/logs, not here.
  # Warnings still show (absl's "W..." lines; orbax warns when a save waits on the last
  # one, which a loaded machine makes happen).
  out = open(log_path).read()
  library = [l for l in out.splitlines() if "checkpoint_manager.py" in l or "orbax" in l.lower()]
  assert library == [l for l in library if re.match(r"[WEF]\d{4} ", l)], library
  logs = os.listdir(os.path.join(workdir, "logs"))
  assert any(n.startswith("train.0.") and "INFO" in n for n in logs)
  assert "checkpoint" in "".join(open(os.path.join(workdir, "logs", n)).read()
                                 for n in logs if os.path.isfile(os.path.join(workdir, "logs", n)))
  reference, config = long_run
  assert config.train.steps == STEPS
  a, b = restore_train_state(workdir, config, STEPS), restore_train_state(reference, config,
                                                                          STEPS)
  for key in ("params", "ema", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7,
                                 err_msg=f"kill moments {moments}")

  # Goodput: four starts, one preemption; the summary's last line is JSON.
  proc = subprocess.run([sys.executable, "-m", "skyreels_jax.tools.goodput",
                         f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["starts"] == 4 and summary["preemptions"] == 1
  assert 0 < summary["goodput"] < 1 and summary["productive_s"] > 0
  assert summary["goodput"] == round(summary["productive_s"] / summary["wall_s"], 4) or abs(
      summary["goodput"] - summary["productive_s"] / summary["wall_s"]) < 1e-3
  assert summary["restart_gap_s"] >= 0 and summary["compile_s"] > 0


def test_goodput_cli_on_a_missing_run_is_a_usage_error(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "skyreels_jax.tools.goodput",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "events.jsonl" in proc.stderr


_SIGNAL_SCRIPT = """
import os, signal, sys
from skyreels_jax.train.preemption import PreemptionWatch
watch = PreemptionWatch()
os.kill(os.getpid(), signal.SIG{first})
print("first", watch.signal, watch.reached(1), flush=True)
if "{arm}" == "arm":
  watch.arm_second_signal()
os.kill(os.getpid(), signal.SIG{second})
print("still running", flush=True)
"""


def _signal_script(first, second, arm=""):
  return subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT.format(first=first, second=second,
                                                                     arm=arm)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_second_signal_exits_at_once():
  # Before the save: the first signal is recorded, the second (any of the two) exits.
  proc = _signal_script("TERM", "INT")
  assert proc.stdout.splitlines() == [f"first {int(signal.SIGTERM)} True"]
  assert proc.returncode == 128 + signal.SIGINT
  # During the save (armed), one more SIGTERM exits.
  proc = _signal_script("INT", "TERM", arm="arm")
  assert proc.stdout.splitlines() == [f"first {int(signal.SIGINT)} True"]
  assert proc.returncode == 128 + signal.SIGTERM


def test_the_watch_puts_the_previous_handlers_back():
  before = signal.getsignal(signal.SIGTERM)
  watch = PreemptionWatch()
  assert signal.getsignal(signal.SIGTERM) != before and not watch.reached(0)
  watch.close()
  assert signal.getsignal(signal.SIGTERM) == before
