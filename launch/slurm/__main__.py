"""Submit training to SLURM: builds the `sbatch` command for launch/slurm/train.sbatch.

  python -m launch.slurm --nodes=2 --gpus_per_node=8 [--per_node] [--partition=P]
      [--time=24:00:00] [--dry_run] -- --config=configs/small.py --workdir=/shared/run ...

One JAX process per GPU by default (`--ntasks-per-node=gpus_per_node`); `--per_node` starts
one process per node that drives all its GPUs. Arguments after `--` reach
`python -m skyreels_jax.train` unchanged. `--dry_run` prints the command (to run from the repo
root) instead of submitting it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from launch import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join("launch", "slurm", "train.sbatch")  # relative to REPO, where sbatch runs


def sbatch_command(args: list[str], *, nodes: int = 1, gpus_per_node: int = 8,
                   per_node: bool = False, job_name: str = "skyreels",
                   partition: str | None = None, account: str | None = None,
                   time: str | None = None, output: str | None = None,
                   module: str = "skyreels_jax.train", extra: list[str] = ()) -> list[str]:
  """The sbatch command line; `args` go to `python -m module` on every process."""
  if nodes < 1 or gpus_per_node < 1:
    raise ValueError(f"--nodes={nodes} and --gpus_per_node={gpus_per_node} must be positive")
  cmd = ["sbatch", f"--job-name={job_name}", f"--nodes={nodes}",
         f"--gpus-per-node={gpus_per_node}",
         f"--ntasks-per-node={1 if per_node else gpus_per_node}"]
  for name, value in (("partition", partition), ("account", account), ("time", time),
                      ("output", output)):
    if value:
      cmd.append(f"--{name}={value}")
  if module != "skyreels_jax.train":
    cmd.append(f"--export=ALL,SKYREELS_MODULE={module}")
  return cmd + list(extra) + [SCRIPT] + list(args)


def main(argv: list[str]) -> int:
  p = cli.parser(__doc__)
  p.add_argument("--nodes", type=int, default=1, help="nodes")
  p.add_argument("--gpus_per_node", type=int, default=8, help="GPUs per node")
  p.add_argument("--per_node", action="store_true", help="one process per node, not per GPU")
  p.add_argument("--partition", help="SLURM partition")
  p.add_argument("--account", help="SLURM account")
  p.add_argument("--time", help="time limit (e.g. 24:00:00)")
  p.add_argument("--job_name", default="skyreels", help="job name")
  p.add_argument("--output", help="log file pattern (default: %%x-%%j.out)")
  p.add_argument("--module", default="skyreels_jax.train", help="module every process runs")
  p.add_argument("--sbatch_arg", action="append", default=[],
                 help="extra sbatch option (repeat), e.g. --sbatch_arg=--qos=high")
  p.add_argument("--dry_run", action="store_true", help="print the command, do not submit")
  o, args = cli.parse(p, argv)
  try:
    cmd = sbatch_command(args, nodes=o.nodes, gpus_per_node=o.gpus_per_node,
                         per_node=o.per_node, job_name=o.job_name, partition=o.partition,
                         account=o.account, time=o.time, output=o.output, module=o.module,
                         extra=o.sbatch_arg)
  except ValueError as e:
    p.error(str(e))
  print(shlex.join(cmd), flush=True)
  # Submitted from the repo root: the job starts there (SLURM_SUBMIT_DIR).
  return 0 if o.dry_run else subprocess.run(cmd, check=False, cwd=REPO).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
