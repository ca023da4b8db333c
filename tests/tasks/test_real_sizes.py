"""Every task of SPEC section 3 and the whole cascade at REAL latent geometry: a tiny random
causal Wan VAE (latent 0 = frame 0, then 4 frames per latent; 8x space) and an Oobleck VAE
(hop 64), converted from diffusers. Trains (every task in the mixture, references on) and
samples each task; then a cascade base with 2 keyframes, a refiner, and the decode."""

import numpy as np
import pytest

from conftest import convert_tiny_encoders, small_refiner_config, small_run_config

from data_pipelines.synthetic import geometry_from_config, write_dataset
from skyreels_jax.sample import conditions as C
from skyreels_jax.sample.cascade import Cascade
from skyreels_jax.sample.sampler import Sampler
from skyreels_jax.train.trainer import train

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

RATE = 8000


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("real_encoders")
  return convert_tiny_encoders(root, sample_rate=RATE, downsampling=(8, 8))


def _real(c, root, *, frames, size, fps):
  c.video_ae.kind, c.video_ae.path = "wan", str(root / "wan")
  c.audio_ae.kind, c.audio_ae.path = "oobleck", str(root / "oobleck")
  c.data.num_frames, c.data.height, c.data.width = frames, size, size
  c.data.fps, c.data.sample_rate, c.data.audio_channels = fps, RATE, 1
  c.data.endpoint_frame = True          # 1 + 4k frames: k latent frames of 4 after frame 0
  c.model.patch_size_t, c.model.audio_patch_size = 1, 1
  c.train.steps = c.train.checkpoint_every = c.optim.decay_steps = 1
  c.sample.num_steps = 2
  return c


def _train(config, root, name, clips_per_source=1, edit_pairs=False):
  data = str(root / f"{name}_data")
  config.data.path = data
  write_dataset(data, num_clips=8, seed=0, clips_per_source=clips_per_source,
                edit_pairs=edit_pairs, **geometry_from_config(config.data))
  result = train(config, str(root / name))
  assert result["step"] == 1 and np.isfinite(result["loss"])
  return str(root / name), result


def test_every_task_trains_and_samples_at_wan_and_oobleck_geometry(converted, tmp_path):
  c = _real(small_run_config(), converted, frames=9, size=32, fps=8.0)
  c.data.tasks = dict(t2av=1.0, t2v=1.0, t2a=1.0, i2v=1.0, extend=1.0, start_end=1.0,
                      inpaint=1.0, inpaint_stroke=1.0, inpaint_temporal=1.0,
                      inpaint_given=1.0, edit_pair=1.0, ref_inpaint=1.0)
  c.data.audio_tasks = dict(none=1.0, a_extend=1.0, a_inpaint=1.0, a_inpaint_given=1.0)
  c.data.ref_video_frames = 5          # a clip the causal VAE takes: 2 latent frames
  # Edit pairs (9-frame masks on the causal grid, sources, reference stills).
  workdir, result = _train(c, tmp_path, "run", clips_per_source=2, edit_pairs=True)
  assert result["loss_video"] > 0 and result["loss_audio"] > 0

  s = Sampler(workdir)
  g = s.geometry
  assert g.video_grid == (3, 4, 4) and g.audio_length == 125     # 8000 / 64 samples
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, (9, 32, 32, 3), np.uint8)
  wave = rng.uniform(-0.5, 0.5, (RATE, 1)).astype(np.float32)
  mask = np.zeros((32, 32), np.uint8)
  mask[8:24, 8:24] = 255
  tf = s.temporal_factor
  # A spatio-temporal keep mask: frames 5-8 (latent frame 2) regenerate pixels 8:16 (cell 1).
  moving = np.ones((9, 32, 32), np.uint8)
  moving[5:, 8:16, 8:16] = 0
  tasks = {
      "t2av": C.text_to_video(g),
      "i2v": C.image_to_video(g, tf, clip[0]),
      "extend": C.extend(g, tf, 8.0, 1, clip, wave, 2),
      "start_end": C.start_end(g, tf, clip[0], clip[-1]),
      "inpaint": C.inpaint(g, 1, clip, mask),
      "edit": C.inpaint(g, 1, clip, moving, tf),
      "refs": C.add_references(C.text_to_video(g), g, tf, images=[clip[3], clip[6]],
                               video=clip[:5], audio=wave[:2000],
                               vae_frames=C.causal_prefix(tf)),
  }
  # Which latent frames each task keeps at this geometry (frame 0 alone, then 4 frames).
  kept_frames = {"t2av": [], "i2v": [0], "extend": [0, 1], "start_end": [0, 2], "refs": []}
  edit_keep = tasks["edit"].keep_v[0, ..., 0]
  assert edit_keep.sum() == edit_keep.size - 1 and edit_keep[2, 1, 1] == 0
  for name, cond in tasks.items():
    out = s.generate(["a red circle"], condition=cond, seeds=[1])
    assert out["video"].shape == (1, 9, 32, 32, 3) and out["audio"].shape == (1, RATE, 1)
    assert np.isfinite(out["video_latent"]).all() and np.isfinite(out["audio_latent"]).all()
    keep = cond.keep_v[0, ..., 0]
    if name in kept_frames:
      assert [t for t in range(3) if keep[t].all()] == kept_frames[name]
      assert not keep[[t for t in range(3) if t not in kept_frames[name]]].any()
    inputs = s.condition_inputs(cond)
    kept = np.broadcast_to(inputs["keep_v"] > 0.5, out["video_latent"].shape)
    np.testing.assert_allclose(out["video_latent"][kept], inputs["cond_video"][kept],
                               atol=1e-5)
  refs = s.condition_inputs(tasks["refs"])
  # 2 stills (one latent frame each) + the 5-frame clip (2 latent frames); sound 2000 / 64.
  assert refs["video_refs"].shape[:2] == (1, 4) and refs["video_ref_valid"].all()
  assert refs["audio_refs"].shape[1] == 32 and refs["audio_ref_valid"][0, -1]
  # The extension keeps the source's sound up to the end of its kept frames (5 of 8 frames).
  ext = tasks["extend"].keep_a[0, :, 0]
  assert 0 < ext.sum() < len(ext) and ext[0] == 1


def test_the_cascade_at_wan_and_oobleck_geometry(converted, tmp_path):
  """Base: 64x64 clips -> 32x32 video (4x4 latents) + 2 keyframe stills at 64x64, 9 frames
  at 8 fps; refiner: 17 frames at 16 fps, 64x64; its keyframes at target frames 0 and 16
  (RoPE times 0 and 4: frame / 4)."""
  base = _real(small_run_config(), converted, frames=9, size=64, fps=8.0)
  base.keyframes.count, base.keyframes.scale = 2, 2
  base.data.refs, base.data.audio_ref_rate = dict(none=1.0), 0.0
  refiner = _real(small_refiner_config(), converted, frames=17, size=64, fps=16.0)
  refiner.refiner.num_keyframes = 2
  base_dir, base_result = _train(base, tmp_path, "base")
  refiner_dir, _ = _train(refiner, tmp_path, "refiner")
  assert base_result["loss_keyframes"] > 0

  cascade = Cascade(base_dir, refiner_dir)
  assert cascade.keyframe_frames == (0, 16)
  np.testing.assert_array_equal(cascade.keyframe_times, [0.0, 4.0])
  out = cascade.generate(["a red circle"], seeds=[2])
  assert out["base"]["video"].shape == (1, 9, 32, 32, 3)
  assert out["base"]["keyframes"].shape == (1, 2, 64, 64, 3)
  assert out["video"].shape == (1, 17, 64, 64, 3) and out["video"].dtype == np.uint8
  assert cascade.refiner.geometry.video_grid == (5, 8, 8)
  np.testing.assert_array_equal(out["audio_latent"], out["base"]["audio_latent"])
  assert out["audio"].shape == (1, RATE, 1)
