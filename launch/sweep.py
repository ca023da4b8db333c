"""Sweeps of configs: define in configs/sweeps/NAME.py, launch, rerun to resume, compare.

  python -m launch.sweep --sweep=configs/sweeps/tiny_lr.py --root=DIR [--backend=local|slurm|
      tpu_pod] [--parallel=N] [--launcher_arg=FLAG ...] [--dry_run] [-- extra train args]
  python -m launch.sweep --summarize --root=DIR [--metric=eval_loss]

Every run's config (the sweep's BASE, its overrides, then the extra train args) is built and
validated (shapes only, no weights read) before anything starts: a bad run stops the sweep,
naming the run and the field. Run i trains in ROOT/<name>/ (a name from its overrides and a
short hash of them), which holds its overrides.json; ROOT/sweep.json lists them all. A rerun
skips finished runs (a checkpoint at their last step) and resumes the others (the trainer's
own resume). Backends:
  local    `python -m skyreels_jax.train` on this machine, one run after another, or
           --parallel=N at a time, each on its share of the GPUs (CUDA_VISIBLE_DEVICES); a
           run's console goes to ROOT/<name>/sweep.log. Killing the sweep stops its runs
           at a checkpoint (they get SIGTERM, the trainer's preemption path).
  slurm    one job array through launch/slurm (train.sbatch reads task i's arguments from
           ROOT/array_args.txt); --parallel=N caps the tasks running at once (%N);
           --launcher_arg passes launch.slurm's flags (--nodes=2, --partition=P, ...)
  tpu_pod  one launch/tpu_pod command per run (a workload each with --xpk: --workload=W
           becomes W-<i>); --launcher_arg passes its flags
--dry_run prints the commands (and the launchers' own sbatch / gcloud / xpk lines) instead.
--summarize prints a markdown table (also ROOT/summary.csv), plots every run's loss curve
into ROOT/summary.png, and names the best run by --metric (lower is better). Exit status: 0,
2 for a usage error (one line), else the first failed run's.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from launch import cli, overrides
from launch.overrides import UsageError

BACKENDS = ("local", "slurm", "tpu_pod")
REPO = overrides.REPO


# ------------------------------------------------------------------------------ plan

def load_sweep(path: str) -> tuple[str, list[dict]]:
  """(BASE, runs) of a sweep file."""
  module = overrides.load_file(path, f"--sweep={path}")
  try:
    base, runs = getattr(module, "BASE", None), module.sweep()
  except (AttributeError, ValueError, TypeError) as e:
    raise UsageError(f"--sweep={path}: {e}") from None
  if not isinstance(base, str) or not base:
    raise UsageError(f"--sweep={path}: BASE (the base config file) is missing")
  if not runs or not all(isinstance(r, dict) for r in runs):
    raise UsageError(f"--sweep={path}: sweep() must return a non-empty list of dicts")
  return base, [dict(r) for r in runs]


def run_name(run: dict, keys=None) -> str:
  """"lr=0.001,warmup_steps=10-3f2a9c": the last key part and value of the overrides in
  `keys` (default all; a sweep passes those that vary between its runs), then a hash of the
  whole overrides (two runs never share a folder)."""
  digest = hashlib.sha1(json.dumps(run, sort_keys=True, default=repr).encode()).hexdigest()[:6]
  parts = [f"{k.rsplit('.', 1)[-1]}={overrides.flag_value(v)}" for k, v in run.items()
           if keys is None or k in keys]
  readable = re.sub(r"[^A-Za-z0-9._=,+-]", "", ",".join(parts))[:80]
  return f"{readable}-{digest}" if readable else digest


def plan(sweep_path: str, root: str, extra: list[str]) -> tuple[str, list[dict]]:
  """(BASE, every run as {name, overrides, workdir, args, steps}), each config validated."""
  from skyreels_jax.config import ConfigError, validate  # late: jax, only once flags parsed
  base, runs = load_sweep(sweep_path)
  out, names = [], set()
  keys = dict.fromkeys(k for r in runs for k in r)
  varying = {k for k in keys
             if len({json.dumps(r.get(k), default=repr) for r in runs}) > 1} or set(keys)
  for i, run in enumerate(runs):
    name = run_name(run, varying)
    where = f"run {i} ({name})"
    try:
      config = overrides.load(base)
      for path, value in run.items():
        overrides.set_field(config, path, value)
      overrides.apply_flags(config, extra)
      validate(config, abstract=True)
    except (UsageError, ConfigError) as e:
      raise UsageError(f"{where}: {e}") from None
    if name in names:
      raise UsageError(f"{where}: the same overrides as an earlier run")
    names.add(name)
    workdir = os.path.join(root, name)
    args = [f"--config={base}", f"--workdir={workdir}",
            *[f"--config.{k}={overrides.flag_value(v)}" for k, v in run.items()], *extra]
    out.append(dict(name=name, overrides=run, workdir=workdir, args=args,
                    steps=int(config.train.steps), data_path=str(config.data.path)))
  return base, out


def check_data(runs: list[dict]) -> None:
  """A run of this machine without its data is the user's mistake: one line before any run
  starts (a cluster's paths are not checked from here)."""
  for i, r in enumerate(runs):
    where = f"run {i} ({r['name']})"
    if not r["data_path"]:
      raise UsageError(f"{where}: config.data.path is empty: add -- --config.data.path=DIR "
                       "(python -m data_pipelines.synthetic --out=DIR writes one)")
    if "://" not in r["data_path"] and not glob.glob(r["data_path"]):
      raise UsageError(f"{where}: config.data.path={r['data_path']}: no such path")


def final_step(workdir: str) -> int:
  from skyreels_jax.weights import runs  # late: imports jax, not needed for --help
  return runs.newest_step_on_disk(workdir)


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=repr)
  os.replace(tmp, path)


def write_plan(root: str, sweep_path: str, base: str, runs: list[dict], extra: list[str],
               backend: str) -> None:
  os.makedirs(root, exist_ok=True)
  for r in runs:
    os.makedirs(r["workdir"], exist_ok=True)
    _write_json(os.path.join(r["workdir"], "overrides.json"), r["overrides"])
  _write_json(os.path.join(root, "sweep.json"), {
      "sweep": sweep_path, "base": base, "backend": backend, "extra_args": extra,
      "runs": [{k: r[k] for k in ("name", "overrides", "args", "steps")} for r in runs]})


# ------------------------------------------------------------------------------ local

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
  """In the child: SIGTERM when the sweep dies, even by SIGKILL (Linux), so a killed sweep
  leaves no run training on behind it (it checkpoints and exits, as on a preemption)."""
  try:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):   # not Linux: the sweep's own handler forwards signals
    pass


def visible_gpus() -> list[str]:
  """This machine's GPUs as CUDA_VISIBLE_DEVICES entries ([] without any)."""
  env = os.environ.get("CUDA_VISIBLE_DEVICES")
  if env is not None:
    return [d for d in env.split(",") if d.strip()]
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def device_shares(parallel: int, gpus: list[str]) -> list[dict]:
  """The environment of each of `parallel` slots: an equal share of the GPUs, or nothing to
  set (CPU: every process has its own host devices)."""
  if not gpus:
    return [{} for _ in range(parallel)]
  if len(gpus) < parallel:
    raise UsageError(f"--parallel={parallel}: only {len(gpus)} GPUs to share")
  k = len(gpus) // parallel
  return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * k:(i + 1) * k])} for i in range(parallel)]


def run_local(runs: list[dict], parallel: int) -> int:
  """Runs the pending runs, `parallel` at a time; returns the first failure's status."""
  shares = device_shares(parallel, visible_gpus() if parallel > 1 else [])
  pending, active, failed = list(runs), {}, 0
  stopping = []

  def stop(signum, _frame):
    stopping.append(signum)
    for proc, _ in active.values():
      proc.send_signal(signal.SIGTERM)
  old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while pending or active:
      while pending and len(active) < parallel and not stopping:
        run = pending.pop(0)
        slot = next(i for i in range(parallel) if i not in active)
        active[slot] = (_start(run, shares[slot]), run)
      for slot, (proc, run) in list(active.items()):
        if proc.poll() is None:
          continue
        del active[slot]
        _write_json(os.path.join(run["workdir"], "status.json"),
                    {"returncode": proc.returncode, "finished": time.time()})
        state = ("done" if proc.returncode == 0 else "stopped at a checkpoint (exit 75); "
                 "rerun to resume" if proc.returncode == 75 else f"exit {proc.returncode}")
        print(f"{run['name']}: {state}", flush=True)
        if proc.returncode != 0:
          failed = failed or proc.returncode
          if proc.returncode == 2:   # a usage error repeats for every run: stop here
            pending.clear()
      if stopping and not active:
        return 128 + stopping[0]
      time.sleep(0.2)
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  return failed


def previous_process(workdir: str) -> int | None:
  """The pid of a trainer still running in `workdir` from an earlier sweep command (a killed
  sweep's run finishing its step and saving), else None. Its command line must name the
  workdir, so a reused pid is not mistaken for it."""
  try:
    with open(os.path.join(workdir, "pid.json")) as f:
      pid = int(json.load(f)["pid"])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmdline = f.read().decode(errors="replace")
    with open(f"/proc/{pid}/stat") as f:
      zombie = f.read().split(")")[-1].split()[0] == "Z"
  except (OSError, ValueError, KeyError):
    return None
  return pid if f"--workdir={workdir}" in cmdline and not zombie else None


def _start(run: dict, env: dict) -> subprocess.Popen:
  pid = previous_process(run["workdir"])
  if pid is not None:   # never two trainers on one run directory
    print(f"{run['name']}: waiting for its previous process (pid {pid}) to stop", flush=True)
    while previous_process(run["workdir"]) is not None:
      time.sleep(1.0)
  cmd = [sys.executable, "-m", "skyreels_jax.train", *run["args"]]
  done = final_step(run["workdir"])
  note = f" (resuming from step {done})" if done > 0 else ""
  print(f"$ {shlex.join(cmd)}{note}", flush=True)
  status = os.path.join(run["workdir"], "status.json")
  if os.path.exists(status):
    os.remove(status)
  log = open(os.path.join(run["workdir"], "sweep.log"), "a")
  try:
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
  finally:
    log.close()
  _write_json(os.path.join(run["workdir"], "pid.json"), {"pid": proc.pid})
  return proc


# ------------------------------------------------------------------------- clusters

def slurm_commands(root: str, runs: list[dict], launcher_args: list[str], parallel: int,
                   dry_run: bool) -> tuple[list[str], list[str]]:
  """(the launch.slurm command of one job array over `runs`, its tasks' argument lines)."""
  lines = [shlex.join(r["args"]) for r in runs]
  limit = f"%{parallel}" if parallel > 1 else ""
  array = os.path.join(os.path.abspath(root), "array_args.txt")
  cmd = [sys.executable, "-m", "launch.slurm", *launcher_args,
         f"--sbatch_arg=--array=0-{len(runs) - 1}{limit}",
         f"--sbatch_arg=--export=ALL,SKYREELS_ARRAY_ARGS={array}",
         *(["--dry_run"] if dry_run else []), "--"]
  return cmd, lines


def tpu_pod_command(run_index: int, run: dict, launcher_args: list[str],
                    dry_run: bool) -> list[str]:
  """launch.tpu_pod for one run; an xpk --workload=W gets the run's index (W-<i>)."""
  flags = [re.sub(r"^(--workload=)(.*)$", rf"\g<1>\g<2>-{run_index}", a) for a in launcher_args]
  return [sys.executable, "-m", "launch.tpu_pod", *flags, *(["--dry_run"] if dry_run else []),
          "--", *run["args"]]


# ---------------------------------------------------------------------------- main

def launch(o, extra: list[str]) -> int:
  if o.parallel < 1:
    raise UsageError(f"--parallel={o.parallel} must be at least 1")
  base, runs = plan(o.sweep, o.root, extra)
  print(f"sweep {o.sweep}: {len(runs)} runs of {base} (all configs valid)", flush=True)
  if o.backend == "local" and not o.dry_run:
    check_data(runs)
  if o.dry_run:
    pending = runs
  else:
    write_plan(o.root, o.sweep, base, runs, extra, o.backend)
    pending = []
    for r in runs:
      done = final_step(r["workdir"])
      if done >= r["steps"]:
        print(f"{r['name']}: finished (step {done}), skipped", flush=True)
      else:
        pending.append(r)
  if not pending:
    return 0
  if o.backend == "local":
    if o.dry_run:
      for r in pending:
        print(shlex.join([sys.executable, "-m", "skyreels_jax.train", *r["args"]]))
      return 0
    return run_local(pending, o.parallel)
  if o.backend == "slurm":
    cmd, lines = slurm_commands(o.root, pending, o.launcher_arg, o.parallel, o.dry_run)
    if not o.dry_run:
      with open(os.path.join(o.root, "array_args.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"$ {shlex.join(cmd)}", flush=True)
    for i, line in enumerate(lines):
      print(f"  task {i}: python -m skyreels_jax.train {line}", flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode
  status = 0
  for i, r in enumerate(runs):
    if r not in pending:
      continue
    cmd = tpu_pod_command(i, r, o.launcher_arg, o.dry_run)
    print(f"$ {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    status = status or code
  return status


def main(argv: list[str]) -> int:
  p = cli.parser(__doc__)
  p.add_argument("--sweep", help="sweep file (configs/sweeps/NAME.py)")
  p.add_argument("--root", required=True, help="folder of the sweep's runs")
  p.add_argument("--backend", default="local", choices=BACKENDS)
  p.add_argument("--parallel", type=int, default=1, help="runs at once (local, slurm)")
  p.add_argument("--launcher_arg", action="append", default=[],
                 help="a flag of launch.slurm / launch.tpu_pod (repeat)")
  p.add_argument("--dry_run", action="store_true", help="validate and print the commands")
  p.add_argument("--summarize", action="store_true", help="compare the runs under --root")
  p.add_argument("--metric", default=None,
                 help="--summarize: the column naming the best run (default: eval_loss when "
                 "the runs have one, else final_loss)")
  o, extra = cli.parse(p, argv)
  try:
    if o.summarize:
      from launch import sweep_summary  # late: matplotlib, only to summarize
      return sweep_summary.main(o.root, o.metric)
    if not o.sweep:
      raise UsageError("give --sweep=FILE (or --summarize)")
    return launch(o, extra)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # `... --summarize | head` ends quietly
  sys.exit(main(sys.argv[1:]))
