"""Several JAX processes on this machine, each with its own simulated CPU devices: a multi-host
run without the hosts (tests, debugging the multi-process paths on a laptop).

  python -m launch.local --num_processes=2 --devices_per_process=4 -- \
      --config=configs/tiny.py --workdir=RUN --config.data.path=DATA

starts `python -m skyreels_jax.train <args after -->` (or `--module=skyreels_jax.sample`) N
times with a coordinator on 127.0.0.1 (a free port), prefixes each output line with `[pI]`,
and exits with the first failing child's status after stopping the others.

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


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
  """SIGTERM, then SIGKILL, to each child's process group (a child's grain workers too)."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.time() + grace_s
    while any(p.poll() is None for p in alive) and time.time() < deadline:
      time.sleep(0.1)


def launch(args: list[str], *, num_processes: int = 2, devices_per_process: int = 4,
           module: str = "skyreels_jax.train", port: int = 0, out=None) -> int:
  """Runs `python -m module *args` in `num_processes` processes; returns 0 or the first
  failure's exit status (the other processes are stopped then)."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be positive")
  out = out or sys.stdout
  port = port or free_port()
  lock = threading.Lock()
  procs, threads = [], []
  try:
    for i in range(num_processes):
      env = child_env(os.environ, process_id=i, num_processes=num_processes, port=port,
                      devices_per_process=devices_per_process)
      proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1, start_new_session=True)
      procs.append(proc)
      thread = threading.Thread(target=_stream, args=(proc, f"[p{i}]", lock, out), daemon=True)
      thread.start()
      threads.append(thread)
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, c in enumerate(codes) if c]
      if failed or all(c == 0 for c in codes):
        break
      time.sleep(0.2)
    if not failed:
      return 0
    code = codes[failed[0]]
    _stop(procs)
    with lock:
      out.write(f"[launch.local] process {failed[0]} exited with status {code}; "
                "stopped the others\n")
      out.flush()
    return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
  finally:
    _stop(procs)  # an interrupted launcher leaves nothing running
    for t in threads:
      t.join(timeout=5)


def main(argv: list[str]) -> int:
  parser = cli.parser(__doc__)
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="simulated CPU devices per process")
  parser.add_argument("--module", default="skyreels_jax.train", help="module each one runs")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  opts, args = cli.parse(parser, argv)
  return launch(args, num_processes=opts.num_processes,
                devices_per_process=opts.devices_per_process, module=opts.module, port=opts.port)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
