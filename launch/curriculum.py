"""The training curriculum (configs/stages.py), stage after stage, each initialised from the
previous one's final weights.

  python -m launch.curriculum --size=tiny --stages=1,2,3 --root=DIR --data=RECORDS \\
      [--steps=1:N1,2:N2,...] [--backend=local|slurm|tpu_pod] [--train_arg=--config.x=v ...] \\
      [--dry_run] [-- <flags of the backend's launcher>]

Stage S runs in ROOT/stage_S with `--config=configs/stages.py:S,SIZE`; every stage after the
first gets `--config.train.init_from=ROOT/stage_<previous>` (train/init.py: step 0, a fresh
optimizer, schedule and data order). A finished stage (a checkpoint at its last step) is
skipped; an interrupted one resumes from its own checkpoint (the same command). Backends:
  local    `python -m skyreels_jax.train` on this machine's devices, one stage after the other
  slurm    one sbatch job per stage (launch/slurm), each depending on the previous one
           (--dependency=afterok); the launcher's flags after `--` (--nodes, ...)
  tpu_pod  launch/tpu_pod on every host, one stage after the other; its flags after `--`
`--dry_run` validates every stage's config (shapes only, no weights read) and prints the
commands. Exit status: 0 done (or submitted), 2 a usage error, else the failing stage's.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launch import cli, overrides

BACKENDS = ("local", "slurm", "tpu_pod")
ORDER = ("1", "2", "3", "4", "5", "6", "audio", "joint", "sft1", "sft2")


UsageError = overrides.UsageError


def parse_steps(text: str, stages: list[str]) -> dict[str, int]:
  """"1:200,2:400" -> {"1": 200, "2": 400}; stages must be among `stages`."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    stage, sep, n = part.partition(":")
    if not sep or not n.isdigit() or int(n) < 1:
      raise UsageError(f"--steps: {part!r} is not STAGE:N with N >= 1")
    if stage not in stages:
      raise UsageError(f"--steps: stage {stage!r} is not among --stages={','.join(stages)}")
    out[stage] = int(n)
  return out


def workdir(root: str, stage: str) -> str:
  return os.path.join(root, f"stage_{stage}")


def stage_args(stage: str, *, size: str, root: str, data: str, previous: str | None,
               steps: int | None, extra: list[str]) -> list[str]:
  """The train command's arguments of one stage."""
  args = [f"--config=configs/stages.py:{stage},{size}", f"--workdir={workdir(root, stage)}",
          f"--config.data.path={data}"]
  if steps:
    args.append(f"--config.train.steps={steps}")
  if previous is not None:
    args.append(f"--config.train.init_from={workdir(root, previous)}")
  return args + list(extra)


def stage_config(args: list[str]):
  """The config a stage's train command builds: the stage file plus its `--config.*` flags."""
  from configs import stages  # pylint: disable=g-import-not-at-top
  spec = next(a for a in args if a.startswith("--config=")).split(":", 1)[1]
  return overrides.apply_flags(stages.get_config(spec), args)


def _earlier(root: str, stage: str) -> str | None:
  """The curriculum stage before `stage` when ROOT holds its finished run (a chain continued
  by a later command), else None (a fresh start)."""
  if stage not in ORDER or ORDER.index(stage) == 0:
    return None
  before = ORDER[ORDER.index(stage) - 1]
  return before if final_step(workdir(root, before)) > 0 else None


def final_step(workdir_: str) -> int:
  """The newest checkpoint step of a run directory (-1: none)."""
  from skyreels_jax.weights import runs  # pylint: disable=g-import-not-at-top
  return runs.newest_step_on_disk(workdir_)


def _run_local(args: list[str]) -> int:
  print("$ python -m skyreels_jax.train " + " ".join(args), flush=True)
  return subprocess.run([sys.executable, "-m", "skyreels_jax.train", *args]).returncode


def main(argv: list[str]) -> int:
  p = cli.parser(__doc__)
  p.add_argument("--size", default="small", help="model size of configs/stages.py")
  p.add_argument("--stages", required=True, help="comma-separated stages, in order")
  p.add_argument("--root", required=True, help="folder of the stages' work directories")
  p.add_argument("--data", required=True, help="records folder (data.path of every stage)")
  p.add_argument("--steps", default="", help="STAGE:N,... train.steps per stage")
  p.add_argument("--backend", default="local", choices=BACKENDS)
  p.add_argument("--train_arg", action="append", default=[],
                 help="a flag for every stage's train command (repeat)")
  p.add_argument("--dry_run", action="store_true",
                 help="validate every stage's config and print the commands")
  o, launcher_args = cli.parse(p, argv)
  from skyreels_jax.config import ConfigError, validate  # pylint: disable=g-import-not-at-top
  try:
    stages = [s.strip() for s in o.stages.split(",") if s.strip()]
    if not stages:
      raise UsageError("--stages is empty")
    steps = parse_steps(o.steps, stages)
    if not o.dry_run and not os.path.exists(o.data):
      raise UsageError(f"--data={o.data}: no such folder")
    plan = []
    for i, stage in enumerate(stages):
      args = stage_args(stage, size=o.size, root=o.root, data=o.data,
                        previous=stages[i - 1] if i else _earlier(o.root, stage),
                        steps=steps.get(stage), extra=o.train_arg)
      config = stage_config(args)
      validate(config, abstract=True)
      plan.append((stage, args, int(config.train.steps)))
  except (UsageError, ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  job = None
  for stage, args, total in plan:
    if o.dry_run:
      print(" ".join(_backend_command(o.backend, args, launcher_args, job="PREVIOUS_JOB"
                                      if job else None)))
      job = job or "dry"
      continue
    done = final_step(workdir(o.root, stage))
    if done >= total:
      print(f"stage {stage}: finished (step {done}), skipped", flush=True)
      continue
    if done > 0:
      print(f"stage {stage}: resuming from step {done}", flush=True)
    if o.backend == "local":
      status = _run_local(args)
    elif o.backend == "slurm":
      cmd = _backend_command("slurm", args, launcher_args, job=job)
      print("$ " + " ".join(cmd), flush=True)
      proc = subprocess.run(cmd, capture_output=True, text=True)
      status = proc.returncode
      print(proc.stdout + proc.stderr, end="", flush=True)
      last = (proc.stdout.strip().splitlines() or [""])[-1].split(";")[0]
      if status == 0 and not last.isdigit():
        print(f"stage {stage}: sbatch printed no job id ({last!r})", file=sys.stderr)
        return 1
      job = last
    else:
      cmd = _backend_command("tpu_pod", args, launcher_args)
      print("$ " + " ".join(cmd), flush=True)
      status = subprocess.run(cmd).returncode
    if status != 0:
      print(f"stage {stage} failed with status {status}", file=sys.stderr)
      return status
  return 0


def _backend_command(backend: str, args: list[str], launcher_args: list[str], *,
                     job: str | None = None) -> list[str]:
  if backend == "local":
    return [sys.executable, "-m", "skyreels_jax.train", *args]
  if backend == "slurm":
    extra = ["--parsable"] + ([f"--dependency=afterok:{job}"] if job else [])
    return [sys.executable, "-m", "launch.slurm", *launcher_args,
            *[f"--sbatch_arg={e}" for e in extra], "--", *args]
  return [sys.executable, "-m", "launch.tpu_pod", *launcher_args, "--", *args]


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
