"""launch.curriculum: stages chained on this machine, each initialised from the previous
one's final weights (its own schedule from warm-up), finished stages skipped; --dry_run
validates every stage; usage errors exit 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from data_pipelines.synthetic import write_buckets
from configs import stages

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small enough for a CPU test: one block of each kind, a log line per step; an EMA that
# follows a 12-step run (stages start from the EMA weights).
TRAIN_ARGS = ["--config.model.num_dual_blocks=1", "--config.model.num_single_blocks=1",
              "--config.optim.warmup_steps=2", "--config.train.log_every=1",
              "--config.optim.ema_decay=0.5"]


def _curriculum(*args, timeout=900):
  flags = [*args] + [f"--train_arg={a}" for a in TRAIN_ARGS]
  return subprocess.run([sys.executable, "-m", "launch.curriculum", "--size=tiny", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _rows(root, stage):
  with open(os.path.join(root, f"stage_{stage}", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Stills only (the image bucket): stages 1 (T2I) and 2 (T2I + T2V) see the same data,
  so stage 2's first loss measures what stage 1 left it."""
  out = str(tmp_path_factory.mktemp("buckets"))
  write_buckets(out, stages.get_config("2,tiny").data, num_clips=16, seed=0)
  for name in os.listdir(out):
    if not name.startswith("image_"):
      shutil.rmtree(os.path.join(out, name))
  return out


def test_stage_two_starts_where_stage_one_ended(records, tmp_path):
  root, fresh = str(tmp_path / "chain"), str(tmp_path / "fresh")
  proc = _curriculum("--stages=1,2", f"--root={root}", f"--data={records}", "--steps=1:12,2:2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  one, two = _rows(root, 1), _rows(root, 2)
  assert [r["step"] for r in two] == [1, 2]
  assert one[0]["lr"] == 0.0 and two[0]["lr"] == 0.0       # each stage from its warm-up
  report = json.load(open(os.path.join(root, "stage_2", "init_report.json")))
  assert report["loaded"] and report["new"] == [] and report["step"] == 12
  # The same first batch and step key, from fresh weights.
  proc = _curriculum("--stages=2", f"--root={fresh}", f"--data={records}", "--steps=2:1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not os.path.exists(os.path.join(fresh, "stage_2", "init_report.json"))
  start, last, scratch = two[0]["loss"], one[-1]["loss"], _rows(fresh, 2)[0]["loss"]
  assert abs(start - last) < 0.5 * (scratch - last), (start, last, scratch)
  # Run again: both stages are finished and skipped.
  proc = _curriculum("--stages=1,2", f"--root={root}", f"--data={records}", "--steps=1:12,2:2",
                     timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "stage 1: finished" in proc.stdout and "stage 2: finished" in proc.stdout
  assert len(_rows(root, 2)) == 2


def test_dry_run_validates_every_stage_and_usage_errors_exit_2(tmp_path):
  every = "1,2,3,4,5,6,audio,joint,sft1,sft2"
  proc = _curriculum(f"--stages={every}", f"--root={tmp_path}", "--data=RECORDS", "--dry_run",
                     timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if "skyreels_jax.train" in line]
  assert len(lines) == 10 and "init_from" not in lines[0]
  assert all(f"--config.train.init_from={tmp_path}/stage_{a}" in b
             for a, b in zip(every.split(","), lines[1:]))
  assert not os.listdir(tmp_path)                            # nothing ran
  for bad in (["--stages=1,9"], ["--stages=1", "--steps=2:5"], ["--stages=1", "--steps=1:x"]):
    proc = _curriculum(*bad, f"--root={tmp_path}", "--data=RECORDS", "--dry_run", timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
