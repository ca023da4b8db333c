"""Multi-shot clips end to end at tiny size: 2-shot procedural clips -> training with shot
tags and the shot-aware cross-attention under sequence parallelism (Ulysses on a (1, 2, 2, 2)
mesh) -> the sampler's --shots, whose model calls carry each frame's shot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import small_run_config, spy_sampler
from data_pipelines.synthetic import geometry_from_config, write_dataset
from skyreels_jax.data import shots
from skyreels_jax.tasks import shots as shots_lib
from skyreels_jax.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = [dict(start=0.0, end=0.5, text="a red circle bounces around a dark room"),
         dict(start=0.5, end=1.0, text="a blue square bounces around a dark room")]


def shot_config(data_path="", parallel=True):
  c = small_run_config(data_path, **{"data.shot_captions": True, "model.shot_attention": True,
                                     "text.max_length": 64, "train.steps": 2,
                                     "data.max_shots_per_clip": 2})
  if parallel:     # else one device: the sampler spy's (conftest.spy_sampler)
    c.attention = "ulysses"
    c.mesh.data, c.mesh.fsdp, c.mesh.sequence, c.mesh.tensor = 1, 2, 2, 2
  return c


@pytest.fixture(scope="module")
def shot_run(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("shots_data"))
  write_dataset(data, num_clips=16, seed=0, clips_per_source=2, shots=2,
                **geometry_from_config(small_run_config().data))
  workdir = str(tmp_path_factory.mktemp("shots_run"))
  config = shot_config(data)
  result = train(config, workdir)
  return workdir, config, result


def test_training_on_shots_gives_a_finite_loss(shot_run):
  _, _, result = shot_run
  assert np.isfinite(result["loss"])


def test_sampler_gives_each_frame_its_shot(shot_run, monkeypatch):
  workdir, config, _ = shot_run
  sampler, calls = spy_sampler(workdir, shot_config(config.data.path, parallel=False), monkeypatch,
                               ("video_shot", "text_shot"))
  prompt = shots.prompt_text("", SHOTS, 1.0)
  sampler.generate([prompt, "a plain prompt"], settings=sampler.settings(num_steps=1))
  video_shot, text_shot = (np.asarray(x) for x in calls[0])
  t_latent = sampler.geometry.video_grid[0]
  centres = shots_lib.latent_frame_centres(config.data.num_frames, t_latent,
                                           sampler.temporal_factor)
  expected = np.where((centres + 0.5) / config.data.fps < 0.5, 1, 2)
  # rows: [prompt, plain] and their unconditional halves (no shots anywhere)
  np.testing.assert_array_equal(video_shot[0], expected)
  assert not video_shot[1:].any()
  assert set(text_shot[0]) == {0, 1, 2} and not text_shot[1:].any()


def test_cli_shots(shot_run, trained_run, tmp_path):
  workdir, _, _ = shot_run
  path = tmp_path / "shots.json"
  path.write_text(json.dumps(SHOTS))
  run = lambda w, *flags: subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={w}", f"--shots={path}",
       f"--out={tmp_path / 'out'}", "--num_steps=1", *flags], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = json.loads((tmp_path / "out" / "sample_0.json").read_text())
  assert meta["prompt"] == shots.prompt_text("", SHOTS, 1.0)
  assert os.path.getsize(tmp_path / "out" / "sample_0.mp4") > 0
  # a run trained without shot captions never read a tag: refused, one line, exit 2
  proc = run(trained_run[0])
  assert proc.returncode == 2 and "data.shot_captions" in proc.stderr
  assert "Traceback" not in proc.stderr
  # ... and so is a cascade whose refiner never read one (it is given the same captions)
  proc = run(workdir, f"--refiner_workdir={trained_run[0]}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"--refiner_workdir={trained_run[0]}: " in proc.stderr
  assert "data.shot_captions" in proc.stderr and "Traceback" not in proc.stderr
  too_long = tmp_path / "long.json"
  too_long.write_text(json.dumps([dict(start=0, end=3.0, text="x")]))
  proc = run(workdir, f"--shots={too_long}")
  assert proc.returncode == 2 and "past the clip" in proc.stderr
