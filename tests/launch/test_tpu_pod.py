"""TPU pod launcher: the exact gcloud / xpk commands of --dry_run."""

import os
import shlex
import subprocess
import sys

import pytest

from launch import tpu_pod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_ARGS = ["--config=configs/hv13b.py", "--workdir=gs://bucket/run 1",
              "--config.data.path=gs://bucket/data"]


def _dry_run(*flags):
  proc = subprocess.run([sys.executable, "-m", "launch.tpu_pod", *flags, "--dry_run", "--",
                         *TRAIN_ARGS], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.strip().splitlines()


def test_gcloud_ssh_to_all_workers():
  [line] = _dry_run("--tpu=my-pod", "--zone=us-east5-a", "--project=proj")
  assert line == (
      "gcloud compute tpus tpu-vm ssh my-pod --zone=us-east5-a --project=proj --worker=all "
      + shlex.quote("--command=cd ~/skyreels_jax && source .venv/bin/activate && "
                    "SKYREELS_DISTRIBUTED=tpu python -m skyreels_jax.train "
                    "--config=configs/hv13b.py '--workdir=gs://bucket/run 1' "
                    "--config.data.path=gs://bucket/data"))
  argv = shlex.split(line)
  remote = argv[-1].removeprefix("--command=")
  # What each worker's shell runs: the train args arrive intact.
  assert shlex.split(remote.split("&& ")[-1])[4:] == TRAIN_ARGS


def test_gcloud_repo_venv_env_and_module():
  cmd = tpu_pod.gcloud_command(["--out=o"], tpu="p", zone="z", repo_dir="/srv/my repo",
                               venv="", module="skyreels_jax.sample", env=["XLA_FLAGS=--a --b"])
  assert cmd[-1] == ("--command=cd '/srv/my repo' && SKYREELS_DISTRIBUTED=tpu "
                     "XLA_FLAGS='--a --b' python -m skyreels_jax.sample --out=o")
  with pytest.raises(ValueError, match="--tpu and --zone"):
    tpu_pod.gcloud_command([], tpu="p", zone=None)
  with pytest.raises(ValueError, match="KEY=VALUE"):
    tpu_pod.host_command([], env=["oops"])


def test_xpk_workload():
  [line] = _dry_run("--xpk", "--cluster=my-gke", "--workload=run-1", "--tpu_type=v5p-256",
                    "--num_slices=4", "--docker_image=gcr.io/p/skyreels:latest")
  assert shlex.split(line) == [
      "xpk", "workload", "create", "--cluster=my-gke", "--workload=run-1",
      "--tpu-type=v5p-256", "--num-slices=4", "--docker-image=gcr.io/p/skyreels:latest",
      "--command", "SKYREELS_DISTRIBUTED=tpu python -m skyreels_jax.train "
      "--config=configs/hv13b.py '--workdir=gs://bucket/run 1' "
      "--config.data.path=gs://bucket/data"]


def test_missing_flags_are_usage_errors():
  proc = subprocess.run([sys.executable, "-m", "launch.tpu_pod", "--xpk", "--dry_run"],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "--cluster and --workload" in proc.stderr


def test_restarts_on_xpk_and_on_tpu_vms(tmp_path):
  cmd = tpu_pod.xpk_command(["--out=o"], cluster="c", workload="w", max_restarts=5)
  assert "--max-restarts=5" in cmd
  remote = tpu_pod.host_command(["--workdir=/r"], module="fake_train", max_restarts=2)
  # Run the host loop with a stand-in train module: crash, preempted (75), then done.
  (tmp_path / "fake_train.py").write_text(
      "import os, sys\nn = len(os.listdir(sys.argv[1].split('=')[1]))\n"
      "open(os.path.join(sys.argv[1].split('=')[1], str(n)), 'w').close()\n"
      "sys.exit([1, 75, 0][n])\n")
  os.makedirs(tmp_path / "r")
  proc = subprocess.run(["bash", "-c", remote.replace("/r", str(tmp_path / "r"))],
                        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "restart 2 of 2" in proc.stdout and len(os.listdir(tmp_path / "r")) == 3
  # A usage error (2) is not retried.
  (tmp_path / "fake_train.py").write_text("import sys\nsys.exit(2)\n")
  proc = subprocess.run(["bash", "-c", remote], cwd=tmp_path,
                        env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "restart" not in proc.stdout
