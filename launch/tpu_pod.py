"""Run training on every host of a Cloud TPU pod, through gcloud (TPU VMs) or xpk (GKE).

  # TPU VM pod: the repo and its venv are already on every worker (same path).
  python -m launch.tpu_pod --tpu=my-v5p-64 --zone=us-east5-a [--project=P] [--dry_run] -- \
      --config=configs/hv13b.py --workdir=gs://bucket/run --config.data.path=gs://bucket/data

  # GKE through xpk: the image holds the repo (xpk builds it from --base_docker_image + cwd).
  python -m launch.tpu_pod --xpk --cluster=C --workload=run1 --tpu_type=v5p-256 \
      --num_slices=2 [--docker_image=IMG] [--dry_run] -- --config=configs/hv13b.py ...

Every host runs `python -m skyreels_jax.train <args after -->` with SKYREELS_DISTRIBUTED=tpu,
so `multihost.initialize` calls `jax.distributed.initialize()`, which finds the other hosts
(and slices) from the TPU environment. `--dry_run` prints the exact command instead.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from launch import cli

_SAFE = re.compile(r"^~?[A-Za-z0-9_@%+=:,./-]*$")


def _quote_path(word: str) -> str:
  """shlex.quote, except that a leading ~ stays unquoted so the remote shell expands it."""
  return word if word and _SAFE.match(word) else shlex.quote(word)


def host_command(args: list[str], *, module: str = "skyreels_jax.train",
                 repo_dir: str | None = None, venv: str | None = None,
                 env: list[str] = (), max_restarts: int = 0) -> str:
  """The shell line every host runs. With `max_restarts`, the train command runs again after a
  crash or a preemption (any status but 0, 2 = usage error, 3 = halted run): when one host's
  process dies the others stop too (JAX's heartbeat), so every host restarts together."""
  parts = []
  if repo_dir:
    parts.append(f"cd {_quote_path(repo_dir)}")
  if venv:
    parts.append(f"source {_quote_path(venv.rstrip('/') + '/bin/activate')}")
  for item in env:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", item):
      raise ValueError(f"--env={item!r}: expected KEY=VALUE")
  assignments = ["SKYREELS_DISTRIBUTED=tpu"] + [
      k + "=" + shlex.quote(v) for k, v in (item.split("=", 1) for item in env)]
  run = " ".join(assignments + ["python", "-m", module] + [shlex.quote(a) for a in args])
  if max_restarts < 0:
    raise ValueError(f"--max_restarts={max_restarts} must be >= 0")
  if max_restarts:
    run = (f"for i in $(seq 0 {max_restarts}); do {run}; s=$?; case $s in 0|2|3) break;; esac; "
           f"echo \"exit $s: restart $((i + 1)) of {max_restarts}\"; done; exit $s")
  parts.append(run)
  return " && ".join(parts)


def gcloud_command(args: list[str], *, tpu: str, zone: str, project: str | None = None,
                   repo_dir: str | None = "~/skyreels_jax", venv: str | None = ".venv",
                   module: str = "skyreels_jax.train", env: list[str] = (),
                   max_restarts: int = 0) -> list[str]:
  """`gcloud compute tpus tpu-vm ssh` running the host command on all workers at once."""
  if not tpu or not zone:
    raise ValueError("--tpu and --zone are required (or --xpk)")
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}"]
  if project:
    cmd.append(f"--project={project}")
  remote = host_command(args, module=module, repo_dir=repo_dir, venv=venv, env=env,
                        max_restarts=max_restarts)
  return cmd + ["--worker=all", f"--command={remote}"]


def xpk_command(args: list[str], *, cluster: str, workload: str, tpu_type: str = "v5p-256",
                num_slices: int = 1, docker_image: str | None = None,
                base_docker_image: str | None = None, project: str | None = None,
                zone: str | None = None, repo_dir: str | None = None, venv: str | None = None,
                module: str = "skyreels_jax.train", env: list[str] = (),
                max_restarts: int = 0) -> list[str]:
  """`xpk workload create` running the host command in every pod of every slice; xpk
  restarts the whole workload after a failure or a preemption (`--max-restarts`)."""
  if not cluster or not workload:
    raise ValueError("--xpk needs --cluster and --workload")
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be at least 1")
  cmd = ["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}",
         f"--tpu-type={tpu_type}", f"--num-slices={num_slices}"]
  if docker_image:
    cmd.append(f"--docker-image={docker_image}")
  if base_docker_image:
    cmd.append(f"--base-docker-image={base_docker_image}")
  if project:
    cmd.append(f"--project={project}")
  if zone:
    cmd.append(f"--zone={zone}")
  if max_restarts:
    cmd.append(f"--max-restarts={max_restarts}")
  remote = host_command(args, module=module, repo_dir=repo_dir, venv=venv, env=env)
  return cmd + ["--command", remote]


def main(argv: list[str]) -> int:
  p = cli.parser(__doc__)
  p.add_argument("--tpu", help="TPU VM (pod) name (gcloud)")
  p.add_argument("--zone", help="zone of the TPU / cluster")
  p.add_argument("--project", help="GCP project (default: gcloud's)")
  p.add_argument("--xpk", action="store_true", help="create an xpk workload instead of ssh")
  p.add_argument("--cluster", help="xpk: GKE cluster")
  p.add_argument("--workload", help="xpk: workload name")
  p.add_argument("--tpu_type", default="v5p-256", help="xpk: TPU type of each slice")
  p.add_argument("--num_slices", type=int, default=1, help="xpk: number of slices")
  p.add_argument("--docker_image", help="xpk: image holding the repo and its env")
  p.add_argument("--base_docker_image", help="xpk: base image; xpk adds the current dir")
  p.add_argument("--repo_dir", help="repo on the hosts (default: ~/skyreels_jax on TPU VMs, "
                 "the image's working directory with xpk)")
  p.add_argument("--venv", help="virtual env to activate, relative to repo_dir (default: "
                 ".venv on TPU VMs, none with xpk; '' for none)")
  p.add_argument("--module", default="skyreels_jax.train", help="module every host runs")
  p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the hosts (repeat)")
  p.add_argument("--max_restarts", type=int, default=0,
                 help="restart after a crash or a preemption this many times (xpk: the "
                 "workload; TPU VMs: the command on every host)")
  p.add_argument("--dry_run", action="store_true", help="print the command, do not run it")
  o, args = cli.parse(p, argv)
  common = dict(module=o.module, env=o.env, project=o.project, max_restarts=o.max_restarts)
  try:
    if o.xpk:
      cmd = xpk_command(args, cluster=o.cluster, workload=o.workload, tpu_type=o.tpu_type,
                        num_slices=o.num_slices, docker_image=o.docker_image,
                        base_docker_image=o.base_docker_image, zone=o.zone,
                        repo_dir=o.repo_dir, venv=o.venv, **common)
    else:
      cmd = gcloud_command(args, tpu=o.tpu, zone=o.zone,
                           repo_dir="~/skyreels_jax" if o.repo_dir is None else o.repo_dir,
                           venv=".venv" if o.venv is None else o.venv, **common)
  except ValueError as e:
    p.error(str(e))
  print(shlex.join(cmd), flush=True)
  return 0 if o.dry_run else subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
