"""Sampling from a trained run: EMA params, T2AV and I2V, decodable MP4 with matching
durations, the CLI's files."""

import json
import re
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import restore_train_state, users_env

from skyreels_jax.sample import export
from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.data.media import cover as resize_image
from skyreels_jax.sample.sampler import Sampler, load_run_config

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
       "--prompt=a red circle", f"--out={out}", f"--image={png}", "--seed=3",
       "--step_bar=on"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=users_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"solver:   0%|          | 0/{config.sample.num_steps}" in proc.stderr
  assert sorted(os.listdir(out)) == ["contact_sheet.png", "logs", "sample_0.json",
                                     "sample_0.mp4", "sample_0.wav"]
  # Orbax's restore lines go to OUT/logs/, not the console.
  assert "checkpoint_manager" not in proc.stderr, proc.stderr[-3000:]
  # No library INFO line at all (jax's "Unable to initialize backend 'tpu'" was one), and
  # none of libtpu's errors on a machine without a TPU.
  assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[-3000:]
  assert "TPU" not in proc.stderr, proc.stderr[-3000:]
  assert "checkpoint_manager" in (out / "logs" / "sample.0.INFO").read_text()
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


def test_cli_out_in_the_way_is_a_usage_error(trained_run, tmp_path):
  """--out naming a file, or below one: one line and status 2, before anything is loaded; a
  later usage error leaves no --out folder behind (it is made once the flags are checked)."""
  workdir, _, _ = trained_run
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}", "--prompt=x",
       f"--out={blocker}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"--out={blocker}: cannot be the output folder" in proc.stderr
  assert "Traceback" not in proc.stderr and blocker.read_text() == "x"
  for out, extra, said in ((blocker / "sub", [], f"error: --out={blocker / 'sub'}: cannot"),
                           (tmp_path / "new" / "out", ["--batch_size=0"],
                            "error: --batch_size=0")):
    proc = subprocess.run(
        [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}", "--prompt=x",
         *extra, f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(said), proc.stderr[-2000:]
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_on_step_sees_every_solver_step_and_changes_nothing(sampler, solver):
  """The progress callback runs once per solver step (Heun: per step, not per evaluation),
  and the sample is the one without it, bit for bit."""
  settings = sampler.settings(seed=3, num_steps=3, solver=solver)
  plain = sampler.generate(["a red circle"], settings=settings)
  ticks = []
  ticked = sampler.generate(["a red circle"], settings=settings, on_step=ticks.append)
  assert sorted(ticks) == [0, 1, 2]
  np.testing.assert_array_equal(plain["video_latent"], ticked["video_latent"])
  np.testing.assert_array_equal(plain["audio_latent"], ticked["audio_latent"])
  sampler.generate(["a red circle"], settings=settings)     # and no callback is left behind
  assert sorted(ticks) == [0, 1, 2]


def test_new_guidance_and_shift_do_not_recompile(sampler):
  """Guidance scales and the shift are traced: only the step count and solver are static."""
  first = sampler.generate(["a red circle"], settings=sampler.settings(
      seed=3, video_guidance=1.0, audio_guidance=1.0, shift=1.0))
  programs = sampler._fn._cache_size()
  second = sampler.generate(["a red circle"], settings=sampler.settings(
      seed=3, video_guidance=6.0, audio_guidance=2.0, shift=3.0))
  assert sampler._fn._cache_size() == programs
  # The new values took effect (the 4-step model's velocities are small, hence no margin;
  # the same settings reproduce the sample bit for bit).
  assert not np.array_equal(first["video_latent"], second["video_latent"])
  again = sampler.generate(["a red circle"], settings=sampler.settings(
      seed=3, video_guidance=1.0, audio_guidance=1.0, shift=1.0))
  np.testing.assert_array_equal(first["video_latent"], again["video_latent"])


def test_auto_shift_at_sampling_uses_the_training_rule(trained_run):
  config = load_run_config(trained_run[0])
  config.sample.shift_mode, config.sample.shift = "auto", 1.5
  sampler = Sampler(trained_run[0], config=config)
  tokens = fm.video_tokens(sampler.geometry.video_grid, config.model.patch_size_t,
                           config.model.patch_size)
  want = 1.5 * (tokens / config.flow.shift_base_tokens) ** 0.5
  assert sampler.settings().shift == pytest.approx(want) and want != 1.5
  assert sampler.settings(shift=2.0).shift == 2.0      # an explicit shift wins


def test_data_prediction_samples_are_the_models_data_estimate(trained_run):
  """flow.*_prediction = "data": the sampler turns the network's output into its velocity for
  every stream. A model whose every weight is 0 outputs 0; read as data, the solver lands on
  it exactly (each step's gap 1 / 3 is above DATA_MIN_GAP), read as a velocity it leaves the
  starting noise where it was."""
  workdir, _, _ = trained_run
  out = {}
  for prediction in fm.PREDICTIONS:
    config = load_run_config(workdir)
    config.flow.video_prediction = config.flow.audio_prediction = prediction
    s = Sampler(workdir, config=config)
    s.params = jax.tree.map(np.zeros_like, s.params)
    out[prediction] = s.generate(["a red circle"], settings=s.settings(seed=0))
  data, velocity = out["data"], out["velocity"]
  np.testing.assert_allclose(data["video_latent"], 0.0, atol=1e-5)
  np.testing.assert_allclose(data["audio_latent"], 0.0, atol=1e-5)
  assert np.abs(velocity["video_latent"]).mean() > 0.5
  assert np.abs(velocity["audio_latent"]).mean() > 0.5
