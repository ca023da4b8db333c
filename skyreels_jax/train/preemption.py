"""Preemption: SIGTERM / SIGINT become "finish this step, save it, exit EXIT_PREEMPTED".

Every process must save the same step. With `jax.distributed` running, JAX's preemption
notifier (C++, below Python) catches SIGTERM and `reached_preemption_sync_point(step)` turns
true on every process at one shared step: the way orbax's `CheckpointManager.reached_preemption`
does it. SIGINT (Ctrl-C) is forwarded to that notifier as a SIGTERM. A one-process run has no
notifier: a Python handler records the signal and the next step boundary sees it.

A second signal exits at once (status 128 + signal), skipping the save: during the save we
install a handler for it. Multi-process caveat: between the first SIGTERM and the agreed step
(a second or two) JAX's notifier owns SIGTERM and a second one is not seen; SIGINT is.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL (sysexits.h): "temporary failure, retry". Launchers rerun on it.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit_now(signum, frame):
  del frame
  os._exit(128 + signum)  # no cleanup: the user asked twice


class PreemptionWatch:
  """Install on entry to the loop; `reached(step)` at each step boundary; `close()` restores
  the handlers that were there before (a loop run inside a test or a notebook)."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.signal: int | None = None
    self._previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set from the main thread
    handled = (signal.SIGINT,) if self.multi_process else SIGNALS
    for sig in handled:
      self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if self.signal is not None:
      _exit_now(signum, frame)
    self.signal = signum
    if self.multi_process:  # hand Ctrl-C to JAX's notifier, which tells every process
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """True on every process at the same step once any of them was signalled."""
    if self.multi_process:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.signal is not None

  def arm_second_signal(self) -> None:
    """From now on (the preemption save), any SIGTERM / SIGINT exits at once."""
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _exit_now)

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
