"""SLURM launcher: the sbatch command of --dry_run, and what train.sbatch runs under srun."""

import os
import shlex
import subprocess
import sys

import pytest

from launch.slurm.__main__ import sbatch_command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_ARGS = ["--config=configs/small.py", "--workdir=/shared/run 1", "--config.seed=3"]


def test_dry_run_prints_the_sbatch_command():
  proc = subprocess.run([sys.executable, "-m", "launch.slurm", "--nodes=4", "--gpus_per_node=8",
                         "--partition=a100", "--time=24:00:00", "--dry_run", "--", *TRAIN_ARGS],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == (
      "sbatch --job-name=skyreels --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 "
      "--partition=a100 --time=24:00:00 launch/slurm/train.sbatch --config=configs/small.py "
      "'--workdir=/shared/run 1' --config.seed=3")


def test_one_process_per_node_and_other_module():
  cmd = sbatch_command(["--out=o"], nodes=2, gpus_per_node=4, per_node=True,
                       module="skyreels_jax.sample", extra=["--qos=high"])
  assert cmd == ["sbatch", "--job-name=skyreels", "--nodes=2", "--gpus-per-node=4",
                 "--ntasks-per-node=1", "--export=ALL,SKYREELS_MODULE=skyreels_jax.sample",
                 "--qos=high", "launch/slurm/train.sbatch", "--out=o"]


def test_sbatch_script_sets_the_coordinator_and_passes_args(tmp_path):
  """Runs train.sbatch with stand-ins for scontrol and srun."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text('#!/bin/bash\n[[ "$*" == "show hostnames gpu[007-008]" ]]'
                                    ' && printf "gpu007\\ngpu008\\n"\n')
  (bin_dir / "srun").write_text('#!/bin/bash\necho "COORD=$SKYREELS_COORDINATOR '
                                'MODE=$SKYREELS_DISTRIBUTED PWD=$PWD"\n'
                                'for a in "$@"; do echo "ARG=$a"; done\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="1234",
             SLURM_JOB_NODELIST="gpu[007-008]", SLURM_SUBMIT_DIR=REPO, SKYREELS_VENV="none")
  proc = subprocess.run(["bash", os.path.join(REPO, "launch/slurm/train.sbatch"), *TRAIN_ARGS],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert f"COORD=gpu007:62674 MODE=slurm PWD={REPO}" in lines
  args = [l.removeprefix("ARG=") for l in lines if l.startswith("ARG=")]
  assert args == ["--kill-on-bad-exit=1", "python", "-m", "skyreels_jax.train", *TRAIN_ARGS]
  assert shlex.join(args[4:]) == "--config=configs/small.py '--workdir=/shared/run 1' " \
      "--config.seed=3"


def _fake_slurm(tmp_path, srun_status):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text(
      '#!/bin/bash\nif [[ "$1" == requeue ]]; then echo "REQUEUE $2"; else echo gpu007; fi\n')
  (bin_dir / "srun").write_text(f"#!/bin/bash\nexit {srun_status}\n")
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77",
             SLURM_JOB_NODELIST="gpu007", SLURM_SUBMIT_DIR=REPO, SKYREELS_VENV="none")
  return subprocess.run(["bash", os.path.join(REPO, "launch/slurm/train.sbatch")],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False), (3, False)])
def test_a_preempted_job_is_requeued(tmp_path, status, requeued):
  """SIGTERM before the time limit (#SBATCH --signal) -> the run saves and exits 75 -> the
  script requeues the job; other statuses pass through."""
  proc = _fake_slurm(tmp_path, status)
  assert proc.returncode == status, proc.stderr
  assert ("REQUEUE 77" in proc.stdout) == requeued
  script = open(os.path.join(REPO, "launch/slurm/train.sbatch")).read()
  assert "#SBATCH --signal=TERM@120" in script and "#SBATCH --requeue" in script
