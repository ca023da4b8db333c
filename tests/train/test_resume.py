"""Checkpoints you can trust: a damaged newest checkpoint falls back, --restore_step, and
checkpoints of another kind of run stop before compiling."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import restore_train_state, small_run_config
from skyreels_jax.train.events import read_events
from skyreels_jax.train.resume import DAMAGED, SUPERSEDED, ResumeError
from skyreels_jax.train.trainer import train


def _copy(run, tmp_path):
  dest = str(tmp_path / "run")
  shutil.copytree(run, dest)
  return dest


def _assert_same_state(a, b):
  for key in ("params", "ema", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_truncated_newest_checkpoint_falls_back_to_the_previous(trained_run, tmp_path):
  original, config, _ = trained_run
  run = _copy(original, tmp_path)
  data_file = _largest_file(os.path.join(run, "checkpoints", "4", "state"))
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 3)
  train(config, run)
  # Step 4 moved aside (not deleted), step 2 restored, steps 3-4 done again, exactly.
  assert os.path.exists(os.path.join(run, DAMAGED, "4", "state"))
  events = read_events(run)
  [fallback] = [e for e in events if e["event"] == "fallback"]
  assert fallback["step"] == 4 and fallback["moved_to"].endswith(DAMAGED)
  assert [e["step"] for e in events if e["event"] == "restore"] == [2]
  _assert_same_state(restore_train_state(run, config, 4),
                     restore_train_state(original, config, 4))
  steps = [json.loads(line)["step"] for line in open(os.path.join(run, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4]


def test_restore_step_supersedes_newer_checkpoints_once(trained_run, tmp_path):
  original, config, _ = trained_run
  run = _copy(original, tmp_path)
  with pytest.raises(ResumeError, match=r"--restore_step=3: no such checkpoint .*\[2, 4\]"):
    train(config, run, restore_step=3)
  train(config, run, restore_step=2)
  assert os.listdir(os.path.join(run, SUPERSEDED)) == ["4"]
  assert [e["step"] for e in read_events(run) if e["event"] == "restore"] == [2]
  _assert_same_state(restore_train_state(run, config, 4),
                     restore_train_state(original, config, 4))
  # The same command again (a launcher's restart): step 4 was saved since, it is resumed.
  train(config, run, restore_step=2)
  assert os.listdir(os.path.join(run, SUPERSEDED)) == ["4"]
  assert [e["step"] for e in read_events(run) if e["event"] == "restore"] == [2, 4]


def test_checkpoint_of_another_process_count_stops_before_compiling(trained_run, tmp_path):
  original, config, _ = trained_run
  run = _copy(original, tmp_path)
  for step in ("2", "4"):
    path = os.path.join(run, "checkpoints", step, "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    assert meta["data_shares"] == 1 and meta["process_count"] == 1
    meta["data_shares"], meta["process_count"] = 2, 2
    with open(path, "w") as f:
      json.dump(meta, f)
  with pytest.raises(ResumeError, match=r"written by 2 process\(es\) reading the data as 2 "
                     r"shard\(s\); this run has 1 reading 1"):
    train(config, run)
  # Nothing was moved: this is not damage.
  assert sorted(os.listdir(os.path.join(run, "checkpoints")))[-2:] == ["2", "4"]
  assert not os.path.exists(os.path.join(run, DAMAGED))


def test_checkpoint_of_another_config_is_not_damage(trained_run, synthetic_data, tmp_path):
  original, _, _ = trained_run
  run = _copy(original, tmp_path)
  other = small_run_config(synthetic_data, **{"model.width": 96, "model.num_heads": 2})
  with pytest.raises(ResumeError, match=r"does not match this config \(.*: saved \(192,?\)?.*"
                     r"this config \(96"):
    train(other, run)
  assert not os.path.exists(os.path.join(run, DAMAGED))


def test_wall_clock_checkpoints(synthetic_data, tmp_path):
  config = small_run_config(synthetic_data, **{"train.checkpoint_every": 1000,
                                               "train.checkpoint_every_secs": 1e-3,
                                               "train.max_to_keep": 5})
  train(config, str(tmp_path))
  saves = [(e["step"], e["reason"]) for e in read_events(str(tmp_path)) if e["event"] == "save"]
  assert saves == [(1, "time"), (2, "time"), (3, "time"), (4, "final")]
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [1, 2, 3, 4]
