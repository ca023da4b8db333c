"""Many sequence-parallel training steps on 8 CPU devices, with the trainer's XLA flags (the
suite's faster compile flags are left out: they may hide a deadlock) and its dispatch.

With steps queued without bound, XLA's CPU runtime aborted after ~100 steps ("Termination
timeout for collective permute / all-gather"), for ring, Ulysses and plain attention alike;
the trainer runs one step at a time on CPU (`one_step_in_flight`)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("impl", ["ring", "ulysses"])
def test_300_steps_finish(impl):
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.path.dirname(os.path.dirname(here)))
  proc = subprocess.run([sys.executable, os.path.join(here, "ring_steps.py"), "300", impl],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "ok 300" in proc.stdout, proc.stderr[-2000:]
