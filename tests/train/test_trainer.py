"""The training loop: metrics, checkpoints, exact resume, config errors before compiling."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import restore_train_state, small_run_config
from skyreels_jax.config import ConfigError
from skyreels_jax.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_metrics_and_checkpoints(trained_run):
  workdir, config, result = trained_run
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    for key in ("loss", "loss_video", "loss_audio", "grad_norm", "lr", "steps_per_sec"):
      assert np.isfinite(r[key]), key
    assert r["loss"] == pytest.approx(r["loss_video"] + r["loss_audio"], rel=1e-5)
    # Throughput (perf/throughput.py); no MFU on CPU (no peak in the table).
    assert r["tokens_per_sec"] > 0 and r["tflops_per_device"] > 0 and r["data_wait_s"] >= 0
    assert "mfu" not in r
    # The loss by timestep quartile: each a mean of examples' losses, null when no example
    # of the logged interval drew a t there.
    quartiles = [r[f"loss_t{q}"] for q in range(4)]
    assert any(v is not None for v in quartiles)
    assert all(v is None or v > 0 for v in quartiles)
  assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(config.optim.lr, rel=1e-5)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-2:] == ["2", "4"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert result["step"] == 4


def test_resume_equals_uninterrupted(trained_run, synthetic_data, tmp_path):
  workdir, config, _ = trained_run
  resumed = str(tmp_path / "resumed")
  train(small_run_config(synthetic_data, **{"train.steps": 2}), resumed)
  train(small_run_config(synthetic_data, **{"train.steps": 4}), resumed)
  a = restore_train_state(workdir, config, 4)
  b = restore_train_state(resumed, config, 4)
  assert int(a["step"]) == int(b["step"]) == 4
  for key in ("params", "ema", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  # Params moved from their initial values (the comparison is not vacuous).
  init = restore_train_state(workdir, config, 2)
  moved = [np.abs(np.asarray(x) - np.asarray(y)).max()
           for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(init["params"]))]
  assert max(moved) > 1e-5
  # Metrics of the resumed run: no duplicated steps.
  steps = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4]


def test_batch_not_divisible_fails_before_compiling(synthetic_data, tmp_path):
  config = small_run_config(synthetic_data, **{"data.batch_size": 6})
  with pytest.raises(ConfigError, match="data.batch_size"):
    train(config, str(tmp_path))


def test_missing_data_path_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="data.path"):
    train(small_run_config(""), str(tmp_path))


def test_cli_bad_config_names_the_field(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.train", "--config=configs/tiny.py",
       f"--workdir={tmp_path}", "--config.model.num_heads=5"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.model.num_heads" in proc.stderr
