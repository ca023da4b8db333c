"""train.init_from: a run starts from another run's weights at step 0 (fresh optimizer,
schedule and data), matched by name and shape, reported in init_report.json; a resume never
reads the source again; bad sources are one-line config errors."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import restore_train_state, small_run_config
from skyreels_jax.config import ConfigError, abstract_model
from skyreels_jax.parallel.mesh import make_mesh, rules, state_shardings
from skyreels_jax.train import init as init_lib
from skyreels_jax.train.state import create_state, make_optimizer
from skyreels_jax.train.trainer import train
from skyreels_jax.weights import match, runs
from skyreels_jax.weights.trees import with_shardings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ema(workdir, config):
  _, abstract = nnx.split(abstract_model(config), nnx.Param)
  mesh = make_mesh(config.mesh)
  target = with_shardings(abstract, state_shardings(abstract, mesh, rules(config)))
  return match.flat(runs.read(workdir, "ema", target)[1])


def _fresh(config):
  tx = make_optimizer(config)
  mesh = make_mesh(config.mesh)
  _, state, _ = create_state(config, tx, mesh, rules(config))
  return state, mesh


def test_loads_every_matching_weight_and_reports(trained_run, synthetic_data, tmp_path):
  source, source_config, _ = trained_run
  config = small_run_config(synthetic_data, **{"train.init_from": source})
  state, mesh = _fresh(config)
  fresh = {k: np.asarray(v) for k, v in match.flat(state["params"]).items()}
  loaded, report = init_lib.initialize(config, state, mesh, rules(config), str(tmp_path),
                                       say=lambda _: None)
  ema = _ema(source, source_config)
  got = match.flat(loaded["params"])
  assert sorted(got) == sorted(ema) == report.loaded and not report.new and not report.ignored
  for name, value in ema.items():
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(value), err_msg=name)
  assert any(not np.array_equal(fresh[n], np.asarray(ema[n])) for n in ema)
  for name, value in match.flat(loaded["ema"]).items():     # the EMA starts at the weights
    np.testing.assert_array_equal(np.asarray(value), np.asarray(got[name]))
  assert int(loaded["step"]) == 0
  saved = json.load(open(tmp_path / init_lib.REPORT))
  assert saved["loaded"] == report.loaded and saved["new"] == [] and saved["step"] == 4
  assert saved["counts"]["loaded"] == len(ema)


def test_other_shapes_are_named_or_ignored_and_new(trained_run, synthetic_data, tmp_path):
  """Another text width: the text-facing input layers do not fit; named, then ignored by
  regex and reported as new while everything else loads."""
  source, _, _ = trained_run
  config = small_run_config(synthetic_data, **{"train.init_from": source})
  config.text.width = 96
  state, mesh = _fresh(config)
  with pytest.raises(ConfigError, match=r"train.init_from.*context_embedder.*train.init_ignore"):
    init_lib.initialize(config, state, mesh, rules(config), str(tmp_path), say=lambda _: None)
  ignore = (r"^text_encoder/", r"(context_embedder|text_embedder/linear_1)/kernel$")
  config.train.init_ignore = ignore
  _, report = init_lib.initialize(config, state, mesh, rules(config), str(tmp_path),
                                  say=lambda _: None)
  names = set(match.flat(state["params"]))
  assert report.new == report.ignored and set(report.loaded) | set(report.new) == names
  assert all(any(re.search(p, n) for p in ignore) for n in report.new), report.new
  assert "mmdit/video_io/context_embedder/kernel" in report.new
  assert "mmdit/video_io/context_embedder/bias" in report.loaded


def test_resume_never_reads_the_source_again(trained_run, synthetic_data, tmp_path):
  source, _, _ = trained_run
  copy = str(tmp_path / "source")
  shutil.copytree(source, copy)
  run = str(tmp_path / "run")
  config = small_run_config(synthetic_data, **{"train.init_from": copy, "train.steps": 2})
  result = train(config, run)
  assert result["step"] == 2
  rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  assert rows[0]["step"] == 1 and rows[0]["lr"] == 0.0     # its own schedule, from warm-up
  shutil.rmtree(copy)                                       # the source is gone
  result = train(small_run_config(synthetic_data, **{"train.init_from": copy,
                                                     "train.steps": 4}), run)
  assert result["step"] == 4
  assert int(restore_train_state(run, config, 4)["step"]) == 4


def test_a_bad_source_is_one_line_and_exit_2(tmp_path):
  for bad in (str(tmp_path / "absent"), str(tmp_path)):
    proc = subprocess.run(
        [sys.executable, "-m", "skyreels_jax.train", "--config=configs/tiny.py",
         f"--workdir={tmp_path / 'run'}", f"--config.train.init_from={bad}",
         f"--config.data.path={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.init_from" in proc.stderr and "Traceback" not in proc.stderr


def test_the_refiner_starts_from_the_base_model(trained_run, synthetic_data, tmp_path):
  """SPEC section 5: the refiner is initialised from the video model; both take
  Concat(noisy, condition, mask), so every tensor maps."""
  from conftest import small_refiner_config
  source, _, _ = trained_run
  config = small_refiner_config(synthetic_data)
  config.train.init_from = source
  state, mesh = _fresh(config)
  _, report = init_lib.initialize(config, state, mesh, rules(config), str(tmp_path),
                                  say=lambda _: None)
  assert report.loaded and not report.new and not report.ignored
