"""launch.sweep: configs/sweeps/tiny_lr.py end to end on this machine (killed midway, rerun
to finish without redoing finished runs), the summary's numbers, a bad run stopping the sweep
before anything starts, the slurm / tpu_pod dry runs, the sweep helpers."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from configs.sweeps import fixed, grid, product, zipped
from launch import sweep

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The geometry of conftest.small_run_config (its synthetic_data), one block of each kind.
TRAIN_ARGS = ["--config.data.num_frames=8", "--config.data.height=16", "--config.data.width=16",
              "--config.model.num_dual_blocks=1", "--config.model.num_single_blocks=1",
              "--config.train.steps=3", "--config.train.log_every=1"]
TINY_LR = "configs/sweeps/tiny_lr.py"


def _sweep(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _wait(predicate, timeout, what):
  end = time.time() + timeout
  while not predicate():
    if time.time() > end:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.2)


def _gone(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] == "Z"


@pytest.fixture(scope="module")
def killed_and_rerun(synthetic_data, tmp_path_factory):
  """tiny_lr (4 runs of 3 steps): SIGKILL the sweep while its second run trains, rerun the
  same command. Returns (root, {run: (bytes, mtime) of its metrics.jsonl before the rerun},
  the rerun's stdout, the runs)."""
  root = str(tmp_path_factory.mktemp("sweep"))
  args = [f"--sweep={TINY_LR}", f"--root={root}", "--", f"--config.data.path={synthetic_data}",
          *TRAIN_ARGS]
  _, runs = sweep.plan(TINY_LR, root, args[3:])
  first, second = (r["workdir"] for r in runs[:2])
  proc = subprocess.Popen([sys.executable, "-m", "launch.sweep", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    _wait(lambda: os.path.exists(os.path.join(second, "metrics.jsonl")), 600,
          "the second run's first step")
  finally:
    proc.kill()
    proc.communicate()
  with open(os.path.join(second, "pid.json")) as f:
    child = json.load(f)["pid"]
  # The run does not outlive its sweep: SIGTERM from the kernel, a checkpoint, exit.
  _wait(lambda: _gone(child), 120, "the killed sweep's run to stop")
  assert sweep.final_step(first) == 3
  assert not os.path.exists(os.path.join(runs[2]["workdir"], "metrics.jsonl"))
  # What --summarize says of the killed sweep: run 0 done, run 1 done or interrupted, the
  # others not started.
  summary = _sweep("--summarize", f"--root={root}")
  assert summary.returncode == 0, summary.stderr
  with open(os.path.join(root, "summary.csv")) as f:
    states = [row["state"] for row in csv.DictReader(f)]
  assert states[0] == "done" and states[2:] == ["pending", "pending"]
  assert states[1] == "done" or states[1].startswith("interrupted"), states[1]
  before = {}
  for r in runs:
    path = os.path.join(r["workdir"], "metrics.jsonl")
    if sweep.final_step(r["workdir"]) == 3:
      before[r["name"]] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
  rerun = _sweep(*args)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
  return root, before, rerun.stdout, runs


def test_a_rerun_finishes_the_sweep_without_redoing_finished_runs(killed_and_rerun):
  root, before, out, runs = killed_and_rerun
  assert len(runs) == 4 and len({r["name"] for r in runs}) == 4
  assert runs[0]["name"] in before
  for r in runs:
    assert sweep.final_step(r["workdir"]) == 3, r["name"]
    assert [row["step"] for row in _rows(r["workdir"]) if "loss" in row][-1] == 3
    with open(os.path.join(r["workdir"], "overrides.json")) as f:
      assert json.load(f) == r["overrides"]
  for name, (data, mtime) in before.items():
    path = os.path.join(root, name, "metrics.jsonl")
    assert open(path, "rb").read() == data and os.stat(path).st_mtime_ns == mtime
    assert f"{name}: finished (step 3), skipped" in out
  # The interrupted run resumed from its checkpoint: steps 1..3 logged once each after it.
  second = runs[1]["workdir"]
  assert "resuming from step" in out or runs[1]["name"] in before
  steps = [row["step"] for row in _rows(second) if "loss" in row]
  assert steps[-1] == 3 and sorted(set(steps)) == [1, 2, 3]
  listed = json.load(open(os.path.join(root, "sweep.json")))
  assert [r["name"] for r in listed["runs"]] == [r["name"] for r in runs]
  assert listed["runs"][0]["overrides"] == {"optim.lr": 3e-4, "optim.warmup_steps": 10}


def test_summary_has_one_row_per_run_with_its_losses(killed_and_rerun):
  root, _, _, runs = killed_and_rerun
  proc = _sweep("--summarize", f"--root={root}")
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("| ")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  assert header[:3] == ["run", "config.optim.lr", "config.optim.warmup_steps"]
  assert len(lines) == 1 + 4
  with open(os.path.join(root, "summary.csv")) as f:
    table = {row["run"]: row for row in csv.DictReader(f)}
  assert set(table) == {r["name"] for r in runs}
  for r in runs:
    losses = [row["loss"] for row in _rows(r["workdir"]) if "loss" in row]
    row = table[r["name"]]
    assert row["state"] == "done" and int(row["step"]) == 3
    assert float(row["final_loss"]) == pytest.approx(losses[-1], rel=1e-9)
    assert float(row["best_loss"]) == pytest.approx(min(losses), rel=1e-9)
    assert float(row["config.optim.lr"]) == r["overrides"]["optim.lr"]
  best = min(table.values(), key=lambda row: float(row["final_loss"]))
  assert f"best by final_loss: {best['run']}" in proc.stdout
  assert os.path.getsize(os.path.join(root, "summary.png")) > 10_000
  # A metric no run has is a usage error naming the columns.
  bad = _sweep("--summarize", f"--root={root}", "--metric=eval_loss")
  assert bad.returncode == 2 and "eval_loss" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bad_run_stops_the_sweep_before_any_run_starts(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from configs.sweeps import grid\nBASE = 'configs/tiny.py'\n"
                  "def sweep():\n  return grid({'flow.timestep_sampling': "
                  "['uniform', 'logit_normal', 'cosine']})\n")
  root = tmp_path / "root"
  proc = _sweep(f"--sweep={path}", f"--root={root}", "--", "--config.train.steps=2")
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
  assert "run 2 (timestep_sampling=cosine-" in proc.stderr
  assert "flow.timestep_sampling" in proc.stderr
  assert not root.exists()
  # An unknown field in the extra arguments too.
  proc = _sweep(f"--sweep={TINY_LR}", f"--root={root}", "--", "--config.optim.lrr=1")
  assert proc.returncode == 2 and "run 0" in proc.stderr and "config.optim.lrr" in proc.stderr
  # No data for a run of this machine: one line, nothing written.
  proc = _sweep(f"--sweep={TINY_LR}", f"--root={root}", "--", "--config.train.steps=2")
  assert proc.returncode == 2 and "config.data.path is empty" in proc.stderr
  assert proc.stderr.count("\n") == 1 and not root.exists()


def test_slurm_dry_run_prints_one_job_array(tmp_path):
  root = str(tmp_path / "root")
  proc = _sweep(f"--sweep={TINY_LR}", f"--root={root}", "--backend=slurm", "--parallel=2",
                "--launcher_arg=--nodes=2", "--launcher_arg=--partition=a100", "--dry_run",
                "--", "--config.train.steps=7")
  assert proc.returncode == 0, proc.stderr
  _, runs = sweep.plan(TINY_LR, root, ["--config.train.steps=7"])
  array = os.path.join(root, "array_args.txt")
  assert (f"sbatch --job-name=skyreels --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 "
          f"--partition=a100 --array=0-3%2 --export=ALL,SKYREELS_ARRAY_ARGS={array} "
          f"launch/slurm/train.sbatch") in proc.stdout.splitlines()
  for i, r in enumerate(runs):
    line = shlex.join(["--config=configs/tiny.py", f"--workdir={r['workdir']}",
                       f"--config.optim.lr={r['overrides']['optim.lr']!r}",
                       f"--config.optim.warmup_steps={r['overrides']['optim.warmup_steps']}",
                       "--config.train.steps=7"])
    assert f"  task {i}: python -m skyreels_jax.train {line}" in proc.stdout
  assert not os.path.exists(root)     # a dry run writes nothing


def test_train_sbatch_appends_the_array_tasks_arguments(tmp_path):
  """train.sbatch with stand-ins for scontrol and srun: task 1 runs line 2's arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text("#!/bin/bash\necho gpu007\n")
  (bin_dir / "srun").write_text('#!/bin/bash\nfor a in "$@"; do echo "ARG=$a"; done\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  lines = tmp_path / "array_args.txt"
  lines.write_text(shlex.join(["--workdir=/r/a 0", "--config.optim.lr=0.1"]) + "\n" +
                   shlex.join(["--workdir=/r/b's", "--config.model.rope_axes_dim=(16, 24, 24)"])
                   + "\n")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="9",
             SLURM_JOB_NODELIST="gpu007", SLURM_SUBMIT_DIR=REPO, SKYREELS_VENV="none",
             SLURM_ARRAY_TASK_ID="1", SKYREELS_ARRAY_ARGS=str(lines))
  proc = subprocess.run(["bash", os.path.join(REPO, "launch/slurm/train.sbatch"),
                         "--config=configs/tiny.py"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  args = [l.removeprefix("ARG=") for l in proc.stdout.splitlines() if l.startswith("ARG=")]
  assert args[4:] == ["--config=configs/tiny.py", "--workdir=/r/b's",
                      "--config.model.rope_axes_dim=(16, 24, 24)"]


def test_tpu_pod_dry_run_prints_one_workload_per_run(tmp_path):
  root = str(tmp_path / "root")
  proc = _sweep(f"--sweep={TINY_LR}", f"--root={root}", "--backend=tpu_pod",
                "--launcher_arg=--xpk", "--launcher_arg=--cluster=c1",
                "--launcher_arg=--workload=lr", "--launcher_arg=--tpu_type=v5p-64", "--dry_run")
  assert proc.returncode == 0, proc.stderr
  xpk = [l for l in proc.stdout.splitlines() if l.startswith("xpk workload create")]
  assert [l.split()[4] for l in xpk] == [f"--workload=lr-{i}" for i in range(4)]
  _, runs = sweep.plan(TINY_LR, root, [])
  for line, r in zip(xpk, runs):
    assert line.startswith("xpk workload create --cluster=c1 --workload=")
    assert "--tpu-type=v5p-64" in line
    assert f"--workdir={r['workdir']}" in line
    assert f"--config.optim.warmup_steps={r['overrides']['optim.warmup_steps']}" in line


def test_helpers_and_names():
  assert grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
  assert product({"a": [1, 2]}, [{"b": 3}, {"b": 4}]) == [
      {"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3}, {"a": 2, "b": 4}]
  assert zipped({"a": [1, 2]}, {"b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  assert fixed({"a": [1]}, optim__lr=0.1) == [{"a": 1, "optim.lr": 0.1}]
  with pytest.raises(ValueError, match="differ in length"):
    zipped({"a": [1, 2]}, {"b": [3]})
  with pytest.raises(ValueError, match="set twice"):
    product({"a": [1]}, {"a": [2]})
  with pytest.raises(ValueError, match="a list of values"):
    grid({"a": "abc"})
  # A sweep's names show what varies between its runs (the hash covers everything).
  _, runs = sweep.plan("configs/sweeps/small_shift.py", "/nowhere", [])
  assert len(runs) == 9 and len({r["name"] for r in runs}) == 9
  assert runs[0]["name"].startswith("shift=1.0,audio_loss_weight=0.5-")
  assert runs[0]["overrides"]["train.eval_every"] == 1000
  name = sweep.run_name({"optim.lr": 1e-3, "model.rope_axes_dim": (16, 24, 24)})
  assert name.startswith("lr=0.001,rope_axes_dim=16,24,24-") and "/" not in name
  assert name == sweep.run_name({"optim.lr": 1e-3, "model.rope_axes_dim": (16, 24, 24)})
  assert name != sweep.run_name({"optim.lr": 1e-3, "model.rope_axes_dim": (16, 24, 25)})


def test_parallel_runs_get_equal_shares_of_the_gpus():
  gpus = [str(i) for i in range(8)]
  assert sweep.device_shares(2, gpus) == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
                                          {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}]
  assert sweep.device_shares(3, gpus)[2] == {"CUDA_VISIBLE_DEVICES": "4,5"}
  assert sweep.device_shares(2, []) == [{}, {}]     # CPU: each process has its own devices
  with pytest.raises(sweep.UsageError, match="only 2 GPUs"):
    sweep.device_shares(3, ["0", "1"])


def test_a_failed_run_shows_its_error_line(tmp_path):
  from launch import sweep_summary
  work = tmp_path / "run"
  work.mkdir()
  (work / "sweep.log").write_text("step 1: loss=2.0\nTraceback (most recent call last):\n"
                                  "  File x\nValueError: data.path: no clips\n")
  (work / "status.json").write_text(json.dumps({"returncode": 1}))
  (work / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n{\"step\": 2, ")
  row, rows = sweep_summary.summarize_run(str(tmp_path), {"name": "run", "overrides": {},
                                                          "steps": 5})
  assert row["state"] == "failed (exit 1): ValueError: data.path: no clips"
  assert row["step"] == 1 and row["final_loss"] == 2.0 and len(rows) == 1  # torn line left out
  (work / "status.json").write_text(json.dumps({"returncode": 75}))
  assert sweep_summary.summarize_run(str(tmp_path), {"name": "run", "overrides": {},
                                                     "steps": 5})[0]["state"].startswith(
                                                         "interrupted")


def test_a_rerun_waits_for_the_killed_sweeps_run_to_stop(tmp_path):
  """A run's trainer from an earlier (killed) sweep command may still be saving: the rerun
  must not start a second trainer on the same folder. previous_process finds it by its pid
  and its command line (a reused pid of another program does not count)."""
  work = str(tmp_path / "run")
  os.makedirs(work)
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              f"--workdir={work}"])
  try:
    with open(os.path.join(work, "pid.json"), "w") as f:
      json.dump({"pid": sleeper.pid}, f)
    # Until the child has exec'd, /proc shows the forked parent's command line (a busy
    # machine made this race real): wait for its own.
    deadline = time.time() + 30
    while f"--workdir={work}".encode() not in open(f"/proc/{sleeper.pid}/cmdline", "rb").read():
      assert time.time() < deadline, "the child never started"
      time.sleep(0.05)
    assert sweep.previous_process(work) == sleeper.pid
  finally:
    sleeper.kill()
    sleeper.wait()
  assert sweep.previous_process(work) is None
  with open(os.path.join(work, "pid.json"), "w") as f:
    json.dump({"pid": os.getpid()}, f)      # alive, but not a trainer of this folder
  assert sweep.previous_process(work) is None
