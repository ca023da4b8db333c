"""Several JAX processes on this machine, each with its own simulated CPU devices: a multi-host
run without the hosts (tests, debugging the multi-process paths on a laptop).

  python -m launch.local --num_processes=2 --devices_per_process=4 -- \
      --config=configs/tiny.py --workdir=RUN --config.data.path=DATA

starts `python -m skyreels_jax.train <args after -->` (or `--module=skyreels_jax.sample`) N
times with a coordinator on 127.0.0.1 (a free port), prefixes each output line with `[pI]`,
and exits with the first failing child's status after killing the others (SIGKILL: a peer is
gone, so no coordinated save could finish; `--no_stop_siblings` leaves them to notice it
themselves, within SKYREELS_HEARTBEAT_TIMEOUT_S). `--max_restarts=N` starts all of them again
after a crash or a preemption (the run resumes from its checkpoint). SIGTERM / SIGINT to the
launcher reach every child as SIGTERM: they save the same step and exit 75; the launcher
then exits with that status and does not restart.

Each child gets JAX_PLATFORMS=cpu, `devices_per_process` CPU devices (XLA_FLAGS keeps the
parent's other flags), and SKYREELS_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, which
`skyreels_jax.parallel.multihost.initialize` reads. The rest of the environment (the
persistent compilation cache, JAX_COMPILATION_CACHE_DIR, included) is inherited.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from launch import cli

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Exit statuses not worth a restart: a usage error and a halted (diverged) run fail again.
NO_RESTART = (0, 2, 3)


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(base: dict, *, process_id: int, num_processes: int, port: int,
              devices_per_process: int) -> dict:
  """`base` plus what process `process_id` needs to join the local cluster."""
  env = dict(base)
  xla = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  env.update({
      "XLA_FLAGS": " ".join(xla + [f"{_DEVICE_COUNT_FLAG}={devices_per_process}"]),
      "JAX_PLATFORMS": "cpu",
      "SKYREELS_NUM_CPU_DEVICES": str(devices_per_process),
      "SKYREELS_DISTRIBUTED": "explicit",
      "SKYREELS_COORDINATOR": f"127.0.0.1:{port}",
      "SKYREELS_NUM_PROCESSES": str(num_processes),
      "SKYREELS_PROCESS_ID": str(process_id),
      # Process 0 listens on loopback only (jax binds [::] by default).
      "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
      "PYTHONUNBUFFERED": "1",
  })
  return env


def _stream(proc: subprocess.Popen, prefix: str, lock: threading.Lock, out) -> None:
  for line in proc.stdout:
    with lock:
      out.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
      out.flush()


def _signal_all(procs: list[subprocess.Popen], sig: int) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, sig)   # the child's process group: its grain workers too
      except ProcessLookupError:
        pass


def _wait(procs: list[subprocess.Popen], seconds: float) -> None:
  deadline = time.time() + seconds
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    time.sleep(0.1)


def _kill(procs: list[subprocess.Popen]) -> None:
  """SIGKILL: after a peer failed, a SIGTERM would start a coordinated save that can never
  finish (the peer is gone), so the others are killed outright."""
  _signal_all(procs, signal.SIGKILL)
  _wait(procs, 10.0)


def _status(code: int) -> int:
  return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def run_once(args: list[str], *, num_processes: int, devices_per_process: int, module: str,
             port: int, out, stop_siblings: bool = True, grace_s: float = 300.0,
             heartbeat_timeout_s: int | None = None) -> tuple[int, bool]:
  """One start of all processes: (exit status, was the launcher itself signalled?).

  A child that fails: the others are killed (`stop_siblings`), or left to notice it
  themselves (JAX's heartbeat). SIGTERM / SIGINT to the launcher: forwarded to every child as
  SIGTERM (a coordinated preemption save), SIGKILL after `grace_s`."""
  lock = threading.Lock()
  procs, threads = [], []
  signalled: list[int] = []

  def on_signal(signum, frame):
    del frame
    if signalled:      # a second signal: stop now
      _signal_all(procs, signal.SIGKILL)
    signalled.append(signum)
    _signal_all(procs, signal.SIGTERM)

  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    for i in range(num_processes):
      env = child_env(os.environ, process_id=i, num_processes=num_processes, port=port,
                      devices_per_process=devices_per_process)
      if heartbeat_timeout_s:
        env["SKYREELS_HEARTBEAT_TIMEOUT_S"] = str(heartbeat_timeout_s)
      proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1, start_new_session=True)
      procs.append(proc)
      thread = threading.Thread(target=_stream, args=(proc, f"[p{i}]", lock, out), daemon=True)
      thread.start()
      threads.append(thread)
    reported = set()
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, c in enumerate(codes) if c]
      if signalled:
        _wait(procs, grace_s)
        _kill(procs)
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c]
        return (_status(bad[0]) if bad else 0), True
      if failed and stop_siblings:
        _kill(procs)
        _say(out, lock, f"process {failed[0]} exited with status {_status(codes[failed[0]])}; "
             "killed the others")
        return _status(codes[failed[0]]), False
      for i in failed:
        if i not in reported:
          reported.add(i)
          _say(out, lock, f"process {i} exited with status {_status(codes[i])}; the others "
               "are left to notice it")
      if all(c is not None for c in codes):
        return (_status(codes[failed[0]]) if failed else 0), False
      time.sleep(0.2)
  finally:
    _kill(procs)   # an interrupted launcher leaves nothing running
    for t in threads:
      t.join(timeout=5)
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _say(out, lock, text: str) -> None:
  with lock:
    out.write(f"[launch.local] {text}\n")
    out.flush()


def launch(args: list[str], *, num_processes: int = 2, devices_per_process: int = 4,
           module: str = "skyreels_jax.train", port: int = 0, out=None,
           max_restarts: int = 0, stop_siblings: bool = True, grace_s: float = 300.0,
           heartbeat_timeout_s: int | None = None) -> int:
  """Runs `python -m module *args` in `num_processes` processes; returns 0 or the failure's
  exit status. After a crash or a preemption (any status but 0, 2 = usage error and 3 =
  halted run) it starts them all again, up to `max_restarts` times, each time on a new
  coordinator port; never after the launcher itself was signalled."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be positive")
  if max_restarts < 0:
    raise ValueError("max_restarts must be >= 0")
  out = out or sys.stdout
  for attempt in range(max_restarts + 1):
    status, signalled = run_once(
        args, num_processes=num_processes, devices_per_process=devices_per_process,
        module=module, port=(port if attempt == 0 and port else free_port()), out=out,
        stop_siblings=stop_siblings, grace_s=grace_s, heartbeat_timeout_s=heartbeat_timeout_s)
    if status in NO_RESTART or signalled or attempt == max_restarts:
      return status
    _say(out, threading.Lock(), f"exit status {status}: restart {attempt + 1} of "
         f"{max_restarts}")
  return status


def main(argv: list[str]) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="simulated CPU devices per process")
  parser.add_argument("--module", default="skyreels_jax.train", help="module each one runs")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--max_restarts", type=int, default=0,
                      help="start everything again after a crash or a preemption, this "
                      "many times at most (not after a usage error or a halted run)")
  parser.add_argument("--no_stop_siblings", dest="stop_siblings", action="store_false",
                      help="when a process fails, leave the others to detect it themselves "
                      "(as on a real cluster) instead of killing them")
  parser.add_argument("--grace_s", type=float, default=300.0,
                      help="seconds the children get to save after the launcher is "
                      "signalled, before SIGKILL")
  parser.add_argument("--heartbeat_timeout_s", type=int, default=None,
                      help="seconds after which the others give up on a dead process "
                      "(SKYREELS_HEARTBEAT_TIMEOUT_S; JAX's default 100)")
  opts, args = cli.parse(parser, argv)
  try:
    return launch(args, num_processes=opts.num_processes,
                  devices_per_process=opts.devices_per_process, module=opts.module,
                  port=opts.port, max_restarts=opts.max_restarts,
                  stop_siblings=opts.stop_siblings, grace_s=opts.grace_s,
                  heartbeat_timeout_s=opts.heartbeat_timeout_s)
  except ValueError as e:
    parser.error(str(e))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
