"""Sampling from a trained run: EMA params, T2AV and I2V, decodable MP4 with matching
durations, the CLI's files."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import restore_train_state

from skyreels_jax.sample import export
from skyreels_jax.sample.sampler import Sampler, resize_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sampler(trained_run):
  workdir, _, _ = trained_run
  return Sampler(workdir)


def test_restores_ema_params_of_latest_step(sampler, trained_run):
  workdir, config, _ = trained_run
  assert sampler.step == config.train.steps
  raw = restore_train_state(workdir, config, sampler.step)
  ours = jax.tree.leaves(sampler.params)
  ema = jax.tree.leaves(raw["ema"])
  params = jax.tree.leaves(raw["params"])
  assert len(ours) == len(ema)
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ema))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ema, params))


def test_t2av_mp4_durations_match(sampler, trained_run, tmp_path):
  _, config, _ = trained_run
  out = sampler.generate(["a red circle bounces", "a blue square"],
                         settings=sampler.settings(seed=1))
  g = sampler.geometry
  assert out["video"].shape == (2, g.num_frames, g.height, g.width, 3)
  assert out["video"].dtype == np.uint8
  assert out["audio"].shape == (2, g.num_samples, config.data.audio_channels)
  assert np.all(np.abs(out["audio"]) <= 1.0)
  path = str(tmp_path / "a.mp4")
  export.write_mp4(path, out["video"][0], config.data.fps, out["audio"][0],
                   config.data.sample_rate)
  back = export.read_mp4(path)
  seconds = config.data.num_frames / config.data.fps
  assert back["video"].shape[0] == config.data.num_frames
  assert back["fps"] == pytest.approx(config.data.fps)
  assert back["sample_rate"] == config.data.sample_rate
  assert back["video_duration"] == pytest.approx(seconds, abs=1e-3)
  assert back["audio_duration"] == pytest.approx(seconds, abs=1.0 / config.data.fps)
  # Same seed, same output; another seed, another output.
  again = sampler.generate(["a red circle bounces", "a blue square"],
                           settings=sampler.settings(seed=1))
  np.testing.assert_array_equal(out["video"], again["video"])
  other = sampler.generate(["a red circle bounces", "a blue square"],
                           settings=sampler.settings(seed=2))
  assert np.abs(other["video"].astype(int) - out["video"].astype(int)).mean() > 1.0


def test_i2v_keeps_the_first_frame(sampler):
  g = sampler.geometry
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (g.height, g.width, 3), dtype=np.uint8)
  out = sampler.generate(["a green triangle"], image=image)
  # Identity autoencoder: the kept latent frame decodes to the image exactly (+-1 rounding).
  assert np.abs(out["video"][0, 0].astype(int) - image.astype(int)).max() <= 1
  assert np.abs(out["video"][0, 1:].astype(int) - image.astype(int)).mean() > 5


def test_resize_image_center_crops():
  wide = np.zeros((10, 40, 3), np.uint8)
  wide[:, 15:25] = 255
  small = resize_image(wide, 8, 8)
  assert small.shape == (8, 8, 3)
  assert small.mean() > 200   # the white center survives the crop


def test_cli_writes_mp4_wav_json_and_contact_sheet(trained_run, tmp_path):
  workdir, config, _ = trained_run
  from PIL import Image
  png = tmp_path / "first.png"
  Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(png)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}",
       "--prompt=a red circle", f"--out={out}", f"--image={png}", "--seed=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["contact_sheet.png", "sample_0.json", "sample_0.mp4",
                                     "sample_0.wav"]
  settings = json.load(open(out / "sample_0.json"))
  assert settings["seed"] == 3 and settings["task"] == "i2v"
  assert settings["checkpoint_step"] == config.train.steps
  back = export.read_mp4(str(out / "sample_0.mp4"))
  assert back["video"].shape[0] == config.data.num_frames
  assert abs(back["video_duration"] - back["audio_duration"]) <= 1.0 / config.data.fps


def test_cli_missing_image_is_a_clear_error(trained_run, tmp_path):
  workdir, _, _ = trained_run
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}", "--prompt=x",
       f"--out={tmp_path}", "--image=/nonexistent.png"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "--image=/nonexistent.png" in proc.stderr
