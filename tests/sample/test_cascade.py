"""The efficiency cascade end to end at test size (SPEC section 5): a cascade base (low-res
video + high-res keyframes + audio) and a refiner, each trained 2 steps, sampled together:
the output has the refiner's size and frame rate and the base's audio; the base's keyframe
latents reach the refiner's condition unchanged; the CLI writes the MP4; and sampling on a
(1, 2, 2, 2) mesh equals one device."""

import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest

from conftest import small_refiner_config, small_run_config, spy_sampler

from skyreels_jax.parallel.mesh import make_mesh
from skyreels_jax.sample.cascade import Cascade
from skyreels_jax.sample.sampler import Sampler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def base_config(data_path=""):
  """configs/tiny_base.py at test size: 32x32 clips -> 16x16 video + 2 keyframes at 32x32,
  validated at step 2 on a held-out set."""
  c = small_run_config(data_path)
  c.data.height = c.data.width = 32
  c.keyframes.count, c.keyframes.scale = 2, 2
  c.model.patch_size_t = 1
  c.train.checkpoint_every = 2
  c.train.eval_every, c.train.eval_timesteps = 2, (0.5,)
  c.keyframes.loss_weight = 0.5
  return c


def refiner_config(data_path=""):
  """configs/tiny_refiner.py at test size, 1 s: 32x32 at 16 fps from 16x16 at 8 fps."""
  c = small_refiner_config(data_path)
  c.data.num_frames, c.refiner.num_keyframes = 16, 2
  c.train.checkpoint_every, c.sample.num_steps = 2, 2
  return c


def _train(config, root, name):
  from data_pipelines.synthetic import geometry_from_config, write_dataset
  from skyreels_jax.train.trainer import train
  data = str(root / f"{name}_data")
  config.data.path = data
  write_dataset(data, num_clips=8, seed=0, **geometry_from_config(config.data))
  if config.train.eval_every:
    config.data.eval_path = data + "_eval"
    write_dataset(config.data.eval_path, num_clips=8, seed=1, **geometry_from_config(config.data))
  return train(config, str(root / name))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cascade")
  base = _train(base_config(), root, "base")
  refiner = _train(refiner_config(), root, "refiner")
  return str(root / "base"), str(root / "refiner"), base, refiner


@pytest.fixture(scope="module")
def cascade(runs):
  return Cascade(runs[0], runs[1])


def test_both_stages_train_with_their_losses(runs):
  _, _, base, refiner = runs
  assert np.isfinite(base["loss_keyframes"]) and base["loss_keyframes"] > 0
  assert np.isfinite(refiner["loss"]) and refiner["loss_audio"] == 0.0   # audio is given


def test_the_bases_validation_counts_its_keyframes(runs):
  """eval_loss is the training loss's sum: video, audio and the high-res keyframes, each
  with its weight, and the keyframes also have their own figure."""
  rows = [json.loads(l) for l in open(os.path.join(runs[0], "metrics.jsonl"))]
  ev = next(r for r in rows if "eval_loss" in r)
  assert ev["eval_loss_keyframes"] > 0
  config = base_config()
  want = (config.flow.video_loss_weight * ev["eval_loss_video"]
          + config.flow.audio_loss_weight * ev["eval_loss_audio"]
          + config.keyframes.loss_weight * ev["eval_loss_keyframes"])
  assert ev["eval_loss"] == pytest.approx(want, rel=1e-5)


def test_cascade_output_has_the_refiners_geometry_and_the_bases_audio(cascade):
  g = cascade.refiner.geometry
  assert (g.num_frames, g.height, g.width) == (16, 32, 32)
  assert cascade.refiner.config.data.fps == 16.0
  out = cascade.generate(["a red circle bounces"], seeds=[3])
  base = out["base"]
  assert base["video"].shape == (1, 8, 16, 16, 3)
  assert base["keyframes"].shape == (1, 2, 32, 32, 3)
  assert out["video"].shape == (1, 16, 32, 32, 3) and out["video"].dtype == np.uint8
  # One second of sound, the base's track exactly.
  assert out["audio"].shape == base["audio"].shape == (1, 8000, 1)
  np.testing.assert_array_equal(out["audio_latent"], base["audio_latent"])
  # The keyframe latents are handed to the refiner unchanged, as tokens at frames 0 and 14.
  cond = cascade.condition(base, [3])
  assert cascade.keyframe_frames == (0, 14)
  np.testing.assert_array_equal(cond["keyframe_times"], [0.0, 14.0])
  np.testing.assert_array_equal(cond["keyframes"], base["keyframe_latent"])
  assert not cond["keep_v"].any()      # every target latent is generated


def test_refiner_keyframe_conditioning_at_sampling_equals_training(runs, cascade, monkeypatch):
  """For one high-res clip and keyframe frames: what the refiner's model is fed at sampling
  (a spy around the real model) is what its training builds (tasks/refiner.refiner_video):
  the upsampled low-res condition, the keyframe stills as Concat(k, k, 1) tokens, their RoPE
  times."""
  from skyreels_jax.tasks.masks import given as keyframe_tokens
  from skyreels_jax.tasks.refiner import low_res_view, refiner_video, still_latents
  rng = np.random.default_rng(11)
  clip = rng.uniform(-1, 1, (1, 16, 32, 32, 3)).astype(np.float32)   # the refiner's target
  vae = cascade.refiner.codecs.video_ae
  train = jax.tree.map(np.asarray, refiner_video(
      clip, jax.random.key(0), refiner=cascade.refiner.config.refiner, video_ae=vae,
      frames=cascade.keyframe_frames))
  # What the base would hand over for this clip: its low-res view's latents and its own
  # keyframes (base frames 0 and 7 of the base's high-res clip = target frames 0 and 14).
  base_clip = clip[:, ::2]
  base_out = {"video_latent": np.asarray(vae.encode(low_res_view(clip, 2, 2))),
              "keyframe_latent": np.asarray(still_latents(vae, base_clip[:, [0, 7]])),
              "audio_latent": rng.normal(size=(1, cascade.base.geometry.audio_length,
                                               cascade.base.geometry.audio_channels))}
  cond = cascade.condition(base_out, [0])
  np.testing.assert_allclose(cond["cond_latent"], train["cond"], atol=1e-6)
  np.testing.assert_array_equal(cond["keep_v"], train["keep"])
  np.testing.assert_allclose(cond["keyframes"], train["keyframes"], atol=1e-6)
  np.testing.assert_array_equal(cond["keyframe_times"], train["keyframe_times"])

  refiner, calls = spy_sampler(runs[1], cascade.refiner.config, monkeypatch,
                               ("video", "keyframes", "keyframe_times"))
  refiner.generate(["x"], seeds=[0], settings=refiner.settings(num_steps=2),
                   latent_condition=cond)
  assert len(calls) == 2
  c = train["z0"].shape[-1]
  for video, keyframes, times in calls:
    video, keyframes, times = map(np.asarray, (video, keyframes, times))
    np.testing.assert_allclose(video[:1, ..., c:], np.concatenate(
        [train["cond"], train["keep"]], -1), atol=1e-6)
    np.testing.assert_allclose(keyframes[:1], keyframe_tokens(train["keyframes"]), atol=1e-6)
    np.testing.assert_array_equal(times, train["keyframe_times"])


def test_refiner_start_t_starts_from_the_partly_noised_condition(runs, cascade, monkeypatch):
  """refiner.start_t = s: the first model call sees s * cond + (1 - s) * noise at time s (the
  noise: what the same seed gives the full-step refiner at t = 0), as start_path trains; the
  steps cover s..1 only."""
  import copy
  from skyreels_jax.diffusion import flow_matching as fm
  rng = np.random.default_rng(12)
  g = cascade.base.geometry
  base_out = {"video_latent": rng.normal(size=(1, *g.video_grid, g.video_channels)),
              "keyframe_latent": rng.normal(size=(1, len(g.keyframe_times), *g.keyframe_grid,
                                                  g.video_channels)),
              "audio_latent": rng.normal(size=(1, g.audio_length, g.audio_channels))}
  cond = cascade.condition(base_out, [0])
  seen = {}
  for s in (0.0, 0.5):
    config = copy.deepcopy(cascade.refiner.config)
    config.refiner.start_t = s
    refiner, calls = spy_sampler(runs[1], config, monkeypatch, ("video", "video_timestep"))
    refiner.generate(["x"], seeds=[0], settings=refiner.settings(num_steps=2, shift=1.0),
                     latent_condition=cond)
    seen[s] = [tuple(map(np.asarray, call)) for call in calls]
  c = cascade.refiner.geometry.video_channels
  noise = seen[0.0][0][0][:1, ..., :c]
  np.testing.assert_allclose(seen[0.5][0][0][:1, ..., :c],
                             0.5 * cond["cond_latent"] + 0.5 * noise, atol=1e-5)
  steps = [float(call[1][0]) for call in seen[0.5]]
  np.testing.assert_allclose(steps, [fm.model_timestep(0.5), fm.model_timestep(0.75)],
                             atol=1e-6)


def test_cascade_rejects_keyframes_the_refiner_did_not_train_on(runs):
  from skyreels_jax.sample.cascade import refiner_geometry_config
  from skyreels_jax.sample.sampler import load_run_config
  base = Sampler(runs[0])
  config = load_run_config(runs[1])
  config.refiner.num_keyframes = 3
  with pytest.raises(ValueError, match="refiner.num_keyframes=3"):
    refiner_geometry_config(base.config, base.geometry, config)
  config.refiner.num_keyframes, config.data.num_frames = 2, 8
  with pytest.raises(ValueError, match=r"target frames \[14\].*data.num_frames=8"):
    refiner_geometry_config(base.config, base.geometry, config)


def test_cascade_cli_writes_the_refiners_mp4(runs, tmp_path):
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={runs[0]}",
         f"--refiner_workdir={runs[1]}", "--prompt=a green triangle", f"--out={out}",
         "--num_steps=2", "--refiner_num_steps=2"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with av.open(str(out / "sample_0.mp4")) as f:
    video = f.streams.video[0]
    # write_mp4 upscales tiny clips by a whole factor (min side 128) so they are watchable.
    assert (video.codec_context.width, video.codec_context.height) == (128, 128)
    assert float(video.average_rate) == 16.0
    assert sum(1 for _ in f.decode(video=0)) == 16
  with av.open(str(out / "sample_0.mp4")) as f:
    samples = sum(frame.samples for frame in f.decode(audio=0))
  assert abs(samples / 8000 - 1.0) < 0.15     # one second of sound (AAC frames of 1024)
  meta = json.loads((out / "sample_0.json").read_text())
  assert meta["fps"] == 16.0 and meta["size"] == [32, 32]
  assert meta["refiner"]["num_steps"] == 2
  bad = subprocess.run(cmd[:4] + [f"--refiner_workdir={tmp_path}"] + cmd[5:], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "--refiner_workdir" in bad.stderr


def test_sampling_on_a_2x2x2_mesh_equals_one_device(trained_run):
  """The same seed on (data 1, fsdp 2, sequence 2, tensor 2) with Ulysses attention and on
  one device: the same clip (params restored into either layout from one checkpoint)."""
  workdir, _, _ = trained_run
  from skyreels_jax.sample.sampler import load_run_config
  config = load_run_config(workdir)
  config.attention = "ulysses"
  one = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1),
                          ("data", "fsdp", "sequence", "tensor"),
                          axis_types=(jax.sharding.AxisType.Auto,) * 4)
  big = make_mesh(dict(data=1, fsdp=2, sequence=2, tensor=2))
  outs = []
  for mesh in (one, big):
    s = Sampler(workdir, config=config, mesh=mesh)
    outs.append(s.generate(["a blue square"], seeds=[5], settings=s.settings(num_steps=2)))
  np.testing.assert_allclose(outs[0]["video_latent"], outs[1]["video_latent"], atol=2e-4)
  np.testing.assert_allclose(outs[0]["audio_latent"], outs[1]["audio_latent"], atol=2e-4)
  assert np.abs(outs[0]["video_latent"]).mean() > 0.1


def test_cascade_inpainting_keeps_the_high_res_source(cascade):
  """Inpainting through the cascade: the base inpaints at low res; the refiner's kept cells
  are the HIGH-res source's latents, not the base's upsampled render."""
  from skyreels_jax.sample import conditions
  rng = np.random.default_rng(8)
  hi_src = rng.integers(0, 256, (16, 32, 32, 3), np.uint8)
  mask = np.zeros((32, 32), np.uint8)
  mask[8:24, 8:24] = 255                                   # regenerate the centre
  lo_src = hi_src[::2].reshape(8, 16, 2, 16, 2, 3).mean(axis=(2, 4)).astype(np.uint8)
  lo = conditions.inpaint(cascade.base.geometry, 1, lo_src, mask[::2, ::2])
  hi = conditions.inpaint(cascade.refiner.geometry, 1, hi_src, mask)
  out = cascade.generate(["a red circle"], condition=lo, high_res=hi, seeds=[1])
  z_src = np.asarray(cascade.refiner.codecs.video_ae.encode(conditions.to_unit(hi_src)[None]))
  kept = np.broadcast_to(hi.keep_v > 0.5, z_src.shape)
  assert 0 < kept.mean() < 1
  np.testing.assert_allclose(out["video_latent"][kept], z_src[kept], atol=1e-5)
  assert np.abs(out["video_latent"][~kept] - z_src[~kept]).mean() > 0.05
