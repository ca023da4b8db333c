"""Configs that name converted Wan / Oobleck checkpoints (video_ae.kind=wan, audio_ae.kind=
oobleck): validation reads their geometry, the train step encodes with them inside jit, and a
missing path is a clear error before anything compiles."""

import jax
import ml_collections
import numpy as np
import pytest

from conftest import convert_tiny_encoders
from configs import tiny
from skyreels_jax.config import ConfigError, derive, validate
from skyreels_jax.models import encoders
from skyreels_jax.tasks.examples import make_codecs, training_inputs

RATE = 800   # the tiny Oobleck's sampling rate: 9 frames at 8 fps = 900 samples


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("encoders")
  return convert_tiny_encoders(root, sample_rate=RATE, downsampling=(2, 4))


def _config(root):
  c = tiny.get_config()
  c.video_ae.kind, c.video_ae.path = "wan", str(root / "wan")
  c.audio_ae.kind, c.audio_ae.path = "oobleck", str(root / "oobleck")
  c.data.num_frames, c.data.height, c.data.width = 9, 32, 32     # 1 + 4k frames, 8x8 space
  c.data.fps, c.data.sample_rate, c.data.audio_channels = 8.0, RATE, 1
  c.data.batch_size, c.data.caption_dropout = 2, 0.0
  c.model.patch_size_t, c.model.audio_patch_size = 1, 1
  return c


def test_geometry_comes_from_the_checkpoints(converted):
  config = _config(converted)
  validate(config)
  geom, mcfg = derive(config)
  assert geom.video_grid == (3, 4, 4) and geom.video_channels == 4
  assert geom.audio_length == 113 and geom.audio_channels == 4   # ceil(900 / 8)
  assert (mcfg.video_latent_channels, mcfg.audio_latent_channels) == (4, 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_inputs_encode_with_the_real_autoencoders(converted, dtype):
  """video_ae.dtype / audio_ae.dtype reach the codecs: bf16 weights, float32 latents."""
  config = _config(converted)
  config.video_ae.dtype = config.audio_ae.dtype = dtype
  codecs, tokenizer = make_codecs(config)
  for ae in (codecs.video_ae, codecs.audio_ae):
    assert {x.dtype for x in jax.tree.leaves(ae.params)} == {np.dtype(dtype)}
  rng = np.random.default_rng(0)
  batch = {"video": rng.uniform(-1, 1, (2, 9, 32, 32, 3)).astype(np.float32),
           "audio": rng.uniform(-0.5, 0.5, (2, 900, 1)).astype(np.float32),
           **tokenizer.batch(["a", "b"])}
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs,
                                            use_audio=True))
  inputs, terms = fn(batch, jax.random.key(0))
  atol = 1e-5 if dtype == "float32" else 3e-2    # bf16: jit and eager round apart
  np.testing.assert_allclose(np.asarray(terms["video_z0"]),
                             np.asarray(codecs.video_ae.encode(batch["video"])), atol=atol)
  np.testing.assert_allclose(np.asarray(terms["audio_z0"]),
                             np.asarray(codecs.audio_ae.encode(batch["audio"])), atol=atol)
  assert inputs["video"].shape == (2, 3, 4, 4, 9) and inputs["audio"].shape == (2, 113, 9)
  assert terms["video_z0"].dtype == terms["audio_z0"].dtype == np.float32


def test_missing_or_mismatched_checkpoints_are_config_errors(converted, tmp_path):
  config = _config(converted)
  config.video_ae.path = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match=r"video_ae\.path.*not a converted checkpoint"):
    validate(config)
  config = _config(converted)
  config.audio_ae.path = ""
  with pytest.raises(ConfigError, match=r"audio_ae\.path.*weights need a path"):
    validate(config)
  config = _config(converted)
  config.data.sample_rate = 1600
  with pytest.raises(ConfigError, match=r"data.sample_rate.*800 Hz"):
    validate(config)
  with pytest.raises(ValueError, match="choose one of"):
    encoders.build_video(ml_collections.ConfigDict(dict(kind="vqgan")))
