"""Every sampling task from media files: keep masks on the latent grid, kept latents equal to
the source's after sampling, references as model inputs, the CLI's usage errors and prompt
files. The tiny run's autoencoders are identities (latent = space-to-depth pixels), so
expected latents are exact."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import app
from PIL import Image

from skyreels_jax.sample import conditions as C
from skyreels_jax.sample import sampler as sampler_lib
from skyreels_jax.sample import export
from skyreels_jax.sample import __main__ as cli
from skyreels_jax.sample.sampler import Sampler
from skyreels_jax.tasks import given as given_lib

from conftest import spy_sampler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sampler(trained_run):
  return Sampler(trained_run[0])


@pytest.fixture(scope="module")
def source(sampler, tmp_path_factory):
  """An MP4 (blocky frames that change every frame, a tone) and what the reader makes of it."""
  g, d = sampler.geometry, sampler.config.data
  rng = np.random.default_rng(0)
  cells = rng.integers(0, 256, (g.num_frames, 4, 4, 3), dtype=np.uint8)
  video = np.repeat(np.repeat(cells, g.height // 4, 1), g.width // 4, 2)
  t = np.arange(g.num_samples) / d.sample_rate
  audio = (0.5 * np.sin(2 * np.pi * 440 * t))[:, None].astype(np.float32)
  path = str(tmp_path_factory.mktemp("src") / "src.mp4")
  export.write_mp4(path, video, d.fps, audio, d.sample_rate)
  read = C.read_video(path, fps=d.fps, height=g.height, width=g.width,
                      sample_rate=d.sample_rate, channels=d.audio_channels)
  return path, read.frames, read.audio


def _latent(sampler, frames):
  return np.asarray(sampler.codecs.video_ae.encode(frames))


def test_read_video_at_run_geometry(sampler, source):
  g = sampler.geometry
  _, frames, wave = source
  assert frames.shape == (g.num_frames, g.height, g.width, 3)
  assert wave.shape == (g.num_samples, 1)
  assert np.abs(wave).max() == pytest.approx(0.5, abs=0.1)   # AAC ripple


def test_extend_keeps_exactly_k_source_latents(sampler, source):
  g = sampler.geometry
  _, frames, wave = source
  cond = C.extend(g, 1, sampler.config.data.fps, 1, frames, wave, 3)
  assert cond.keep_v[0, :, 0, 0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  # 3 of 8 frames at 8 fps = 0.375 s = 3000 samples: 18 whole 160-sample audio latents.
  assert cond.keep_a.sum() == 18 and cond.keep_a[0, :18].all()
  out = sampler.generate(["a red circle"], condition=cond, seeds=[4])
  src = _latent(sampler, cond.frames)
  np.testing.assert_allclose(out["video_latent"][0, :3], src[0, :3], atol=1e-6)
  assert np.abs(out["video_latent"][0, 3:] - src[0, 3:]).mean() > 0.05
  src_a = np.asarray(sampler.codecs.audio_ae.encode(cond.audio))
  np.testing.assert_allclose(out["audio_latent"][0, :18], src_a[0, :18], atol=1e-6)
  # The kept frames decode to the source's pixels (+-1 rounding).
  assert np.abs(out["video"][0, :3].astype(int) - frames[:3].astype(int)).max() <= 1


def test_inpaint_keeps_the_inverse_of_the_white_mask(sampler, source, tmp_path):
  g = sampler.geometry
  _, frames, _ = source
  white = np.zeros((g.height, g.width), np.uint8)
  white[:8, :8] = 255                       # latent cells (0..1, 0..1) of the 4x4 grid
  Image.fromarray(white).save(tmp_path / "mask.png")
  mask = C.read_mask(str(tmp_path / "mask.png"), g.height, g.width)
  cond = C.inpaint(g, 1, frames, mask)
  expected = np.ones((4, 4))
  expected[:2, :2] = 0
  for t in range(g.video_grid[0]):
    np.testing.assert_array_equal(cond.keep_v[0, t, :, :, 0], expected)
  assert cond.keep_a.sum() == 0             # the audio is regenerated
  out = sampler.generate(["a blue square"], condition=cond, seeds=[5])
  src = _latent(sampler, cond.frames)[0]
  keep = cond.keep_v[0, ..., 0] > 0.5
  np.testing.assert_allclose(out["video_latent"][0][keep], src[keep], atol=1e-6)
  assert np.abs(out["video_latent"][0][~keep] - src[~keep]).mean() > 0.05


def test_start_end_keeps_the_first_and_last_latent_frames(sampler):
  g = sampler.geometry
  first = np.full((g.height, g.width, 3), 10, np.uint8)
  last = np.full((g.height, g.width, 3), 240, np.uint8)
  cond = C.start_end(g, 1, first, last)
  assert cond.keep_v[0, :, 0, 0, 0].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
  assert cond.frames[0, 0].max() == pytest.approx(10 / 127.5 - 1)
  assert cond.frames[0, -1].min() == pytest.approx(240 / 127.5 - 1)
  assert cond.frames[0, 1:-1].max() == -1.0


def test_references_arrive_as_clean_valid_tokens(sampler, source):
  g = sampler.geometry
  _, frames, wave = source
  ims = [frames[0], frames[5]]
  cond = C.add_references(C.text_to_video(g), g, 1, images=ims, video=frames[:4], audio=wave,
                          vae_frames=C.block_prefix(1))
  inputs = sampler.condition_inputs(cond, batch=2)
  ch = g.video_channels
  refs = inputs["video_refs"]
  assert refs.shape == (2, 6, *g.video_grid[1:], 2 * ch + 1)
  assert inputs["video_ref_valid"].shape == (2, 6) and inputs["video_ref_valid"].all()
  pixels = np.concatenate([np.stack(ims), frames[:4]])[None].astype(np.float32) / 127.5 - 1
  want = _latent(sampler, pixels)[0]
  np.testing.assert_allclose(refs[1, ..., :ch], want, atol=1e-6)      # V = I = the reference
  np.testing.assert_allclose(refs[1, ..., ch:2 * ch], want, atol=1e-6)
  assert (refs[..., -1] == 1).all()                                   # M = 1: clean
  a_refs = inputs["audio_refs"]
  assert a_refs.shape[:2] == (2, g.audio_length) and inputs["audio_ref_valid"].all()
  want_a = np.asarray(sampler.codecs.audio_ae.encode(wave[None]))[0]
  np.testing.assert_allclose(a_refs[0, :, :want_a.shape[-1]], want_a, atol=1e-6)


def test_usage_errors_name_the_flag(sampler, trained_run, source, tmp_path):
  png = str(tmp_path / "a.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
  mp4 = source[0]
  cases = [({"prompt": ["x"], "extend": 2}, "--extend"),
           ({"prompt": ["x"], "mask": png}, "--mask"),
           ({"prompt": ["x"], "image": png, "first": png, "last": png}, "--image"),
           ({"prompt": ["x"], "first": png}, "--last"),
           ({"prompt": ["x"], "video": mp4}, "--video"),
           ({"prompt": ["x"], "ref_image": ["/missing.png"]}, "--ref_image=/missing.png"),
           ({"prompt": ["x"], "video": "/missing.mp4", "extend": 1}, "--video=/missing.mp4"),
           ({}, "--prompt")]
  for values, flag in cases:
    with pytest.raises(app.UsageError) as e:
      cli.task_of(values)
    assert flag in str(e.value) and e.value.exitcode == 2, values
  assert cli.task_of({"prompt": ["x"], "video": mp4, "extend": 1}) == "extend"
  # K must leave something to generate: 8 latent frames here.
  values = {"prompt": ["x"], "video": mp4, "extend": 8, "ref_image": []}
  with pytest.raises(app.UsageError, match="--extend=8"):
    cli.build_condition("extend", values, sampler.config, sampler.geometry)
  # End to end: exit code 2, the flag in stderr, before any checkpoint is read.
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={trained_run[0]}",
       "--prompt=x", f"--out={tmp_path}", "--extend=2"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--extend needs --video" in proc.stderr
  assert proc.stderr.strip().count("\n") == 0, proc.stderr     # one line, no help text
  # A bad flag value: one line too.
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={trained_run[0]}",
       "--prompt=x", f"--out={tmp_path}", "--num_steps=many"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--num_steps" in proc.stderr
  assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_cli_prompt_file_in_batches_records_seeds(trained_run, tmp_path):
  workdir, config, _ = trained_run
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "a red circle"}\n\n{"prompt": "a blue square", "seed": 100}\n'
                     "a green triangle\n")
  ref = tmp_path / "ref.png"
  Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(ref)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}",
       f"--prompt_file={prompts}", "--batch_size=2", f"--out={out}", "--seed=7",
       f"--ref_image={ref}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = sorted(os.listdir(out))
  assert names == sorted(["contact_sheet.png", "logs"] + [f"sample_{i}.{e}" for i in range(3)
                                                  for e in ("json", "mp4", "wav")])
  rows = [json.load(open(out / f"sample_{i}.json")) for i in range(3)]
  assert [r["prompt"] for r in rows] == ["a red circle", "a blue square", "a green triangle"]
  assert [r["seed"] for r in rows] == [7, 100, 9]
  assert all(r["task"] == "t2av" and r["ref_image"] == [str(ref)] for r in rows)
  assert all(r["checkpoint_step"] == config.train.steps and r["num_steps"] == 3 for r in rows)
  videos = [export.read_mp4(str(out / f"sample_{i}.mp4"))["video"] for i in range(3)]
  assert all(v.shape[0] == config.data.num_frames for v in videos)
  assert np.abs(videos[0].astype(int) - videos[2].astype(int)).mean() > 1.0


def test_kept_positions_follow_the_training_interpolant_at_every_step(trained_run, source,
                                                                      monkeypatch):
  """What the model is fed at every solver step (a spy around the real model): at kept
  positions, video and audio, the interpolant t I + (1 - t) eps that training feeds, with
  eps the sample's starting noise; elsewhere the solver's own state."""
  # A new jit, traced with the spy, on one device.
  config = sampler_lib.load_run_config(trained_run[0])
  sampler, calls = spy_sampler(trained_run[0], config, monkeypatch,
                               ("video", "video_timestep", "audio"))
  g = sampler.geometry
  _, frames, wave = source
  cond = C.extend(g, 1, sampler.config.data.fps, 1, frames, wave, 3)
  settings = sampler.settings(num_steps=4, solver="heun")
  sampler.generate(["a red circle"], condition=cond, seeds=[4], settings=settings)
  assert len(calls) == 2 * 4 - 1        # Heun: two evaluations a step, one at the last
  calls = [[np.asarray(x) for x in call] for call in calls]
  kept_v = cond.keep_v[0] > 0.5
  kept_a = cond.keep_a[0] > 0.5
  [(v0, _, a0)] = [c for c in calls if c[1][0] == 1000.0]   # t = 0: the starting noise
  c_ch = v0.shape[-1] // 2              # Concat(noisy, condition, mask)
  eps_v, eps_a = v0[0, ..., :c_ch], a0[0, ..., :a0.shape[-1] // 2]
  seen = set()
  for video, ts, audio in calls:
    t = 1.0 - ts[0] / 1000.0
    seen.add(round(float(t), 4))
    z, cond_v = video[0, ..., :c_ch], video[0, ..., c_ch:2 * c_ch]
    want = t * cond_v + (1 - t) * eps_v
    np.testing.assert_allclose(np.where(kept_v, z, 0), np.where(kept_v, want, 0), atol=1e-5)
    ca = audio.shape[-1] // 2
    za, cond_a = audio[0, ..., :ca], audio[0, ..., ca:2 * ca]
    want_a = t * cond_a + (1 - t) * eps_a
    np.testing.assert_allclose(np.where(kept_a, za, 0), np.where(kept_a, want_a, 0), atol=1e-5)
    if t > 0:   # not a copy of the condition where generated
      assert np.abs(np.where(kept_v, 0, z - want)).mean() > 1e-3
  assert len(seen) == 4 and min(seen) == 0.0   # t = 0, then three later times


def _source_size(path):
  import av
  with av.open(path) as c:
    return c.streams.video[0].height


def test_spatio_temporal_masks_and_audio_span(sampler, trained_run, source, tmp_path,
                                              monkeypatch):
  """--mask as a PNG folder (one frame per frame of --video) and as an MP4 give the keep
  mask of the training rule; --audio_mask keeps the video's own sound outside the span.
  --video is decoded once: the mask is cut by the frames its read picked."""
  g, d = sampler.geometry, sampler.config.data
  mp4, frames, wave = source
  white = np.zeros((g.num_frames, g.height, g.width), np.uint8)
  for t in range(g.num_frames):
    white[t, 4 * (t % 4):4 * (t % 4) + 2, 5:7] = 255       # 2x2 white: one or two cells
  folder = tmp_path / "mask"
  folder.mkdir()
  scale = _source_size(mp4) // g.height     # the mask is at --video's own size
  for t, m in enumerate(white):
    Image.fromarray(np.repeat(np.repeat(m, scale, 0), scale, 1)).save(folder / f"{t:03d}.png")
  want = given_lib.video_keep((white <= 127).astype(np.uint8), g.video_grid,
                              sampler.temporal_factor)
  assert 0 < want.mean() < 1
  values = {"prompt": ["x"], "video": mp4, "mask": str(folder), "ref_image": [],
            "audio_mask": "0.25:0.5"}
  assert cli.task_of(values) == "inpaint"
  opened, av_open = [], C.av.open
  monkeypatch.setattr(C.av, "open", lambda p, *a, **k: opened.append(p) or av_open(p, *a, **k))
  cond = cli.build_condition("inpaint", values, sampler.config, g)
  monkeypatch.undo()
  assert opened == [mp4]
  np.testing.assert_array_equal(cond.keep_v[0], want)
  # Cell (t, 4 * (t % 4) // 4, 1): the white pixels of frame t, nothing else.
  for t in range(g.num_frames):
    assert cond.keep_v[0, t, :, :, 0].sum() == 15 and cond.keep_v[0, t, t % 4, 1, 0] == 0
  np.testing.assert_allclose(cond.audio[0], wave, atol=1e-6)       # its own track
  hop = g.num_samples // g.audio_length
  ends = (np.arange(g.audio_length) + 1) * hop / d.sample_rate
  starts = np.arange(g.audio_length) * hop / d.sample_rate
  regen = (ends > 0.25) & (starts < 0.5)
  np.testing.assert_array_equal(cond.keep_a[0, :, 0], ~regen)
  # With --ref_image: reference-guided inpainting, the same keep mask plus the still.
  Image.fromarray(frames[3]).save(tmp_path / "ref.png")
  cond = cli.build_condition("inpaint", dict(values, ref_image=[str(tmp_path / "ref.png")]),
                             sampler.config, g)
  np.testing.assert_array_equal(cond.keep_v[0], want)
  assert cond.ref_images.shape == (1, 1, g.height, g.width, 3)
  # The same mask as an MP4 (the sampler's own writer, lossy): the same cells.
  export.write_mp4(str(tmp_path / "mask.mp4"), np.repeat(white[..., None], 3, -1), d.fps)
  cond = cli.build_condition("inpaint", dict(values, mask=str(tmp_path / "mask.mp4")),
                             sampler.config, g)
  np.testing.assert_array_equal(cond.keep_v[0], want)
  # --audio_mask alone: every frame kept, the span regenerated.
  alone = dict(values, mask=None)
  assert cli.task_of(alone) == "a_inpaint"
  cond = cli.build_condition("a_inpaint", alone, sampler.config, g)
  assert cond.keep_v.min() == 1 and (cond.keep_a[0, :, 0] == ~regen).all()
  for bad, message in (("1:0.5", "--audio_mask=1:0.5"), ("x", "--audio_mask=x")):
    with pytest.raises(app.UsageError, match=message) as e:
      cli.task_of(dict(values, audio_mask=bad))
    assert e.value.exitcode == 2
  short = tmp_path / "short"
  short.mkdir()
  Image.fromarray(np.repeat(np.repeat(white[0], scale, 0), scale, 1)).save(short / "0.png")
  with pytest.raises(app.UsageError, match="--mask=.*1 frames, the video 8"):
    cli.build_condition("inpaint", dict(values, mask=str(short)), sampler.config, g)
