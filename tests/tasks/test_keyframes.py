"""The cascade base's training inputs (skyreels_jax/tasks/keyframes.py): the clip's low-res
view is the video stream, its keyframes are high-res stills noised with the video's
timestep; the geometry and the config errors follow."""

import jax
import numpy as np
import pytest

from configs import tiny_base
from skyreels_jax.config import ConfigError, derive, validate
from skyreels_jax.tasks.examples import make_codecs, training_inputs
from skyreels_jax.tasks.refiner import low_res_view


def small_base_config():
  c = tiny_base.get_config()
  c.data.height = c.data.width = 32         # low-res stream 16x16
  c.data.num_frames, c.data.batch_size = 8, 2
  c.data.caption_dropout = 0.0
  c.data.tasks.t2av, c.data.tasks.i2v = 0.0, 1.0   # kept low-res frames, never keyframes
  return c


def test_low_res_stream_and_high_res_keyframes():
  config = small_base_config()
  validate(config)
  geom, _ = derive(config)
  assert (geom.height, geom.width, geom.video_grid) == (16, 16, (8, 4, 4))
  assert geom.keyframe_frames == (0, 7) and geom.keyframe_times == (0, 7)
  assert geom.keyframe_grid == (8, 8) and geom.keyframe_size == (32, 32)
  codecs, tokenizer = make_codecs(config)
  rng = np.random.default_rng(4)
  batch = {"video": rng.uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32),
           "audio": rng.uniform(-1, 1, (2, geom.num_samples, 1)).astype(np.float32),
           **tokenizer.batch(["a", "b"])}
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs,
                                            use_audio=True))
  inputs, terms = fn(batch, jax.random.key(0))
  assert inputs.pop("keyframe_times") == (0, 7)
  inputs, terms = jax.tree.map(np.asarray, (inputs, terms))
  c = geom.video_channels
  z_low = np.asarray(codecs.video_ae.encode(low_res_view(batch["video"], 2, 1)))
  np.testing.assert_allclose(terms["video_z0"], z_low, atol=1e-6)
  stills = np.asarray(codecs.video_ae.encode(batch["video"][:, [0, 7]].reshape(4, 1, 32, 32, 3)))
  np.testing.assert_allclose(terms["keyframe_z0"], stills.reshape(2, 2, 8, 8, c), atol=1e-6)
  k = inputs["keyframes"]
  assert k.shape == (2, 2, 8, 8, 2 * c + 1)
  t = terms["t"][:, None, None, None, None]      # the video's timestep
  np.testing.assert_allclose(k[..., :c], t * terms["keyframe_z0"]
                             + (1 - t) * terms["keyframe_eps"], atol=1e-5)
  empty = np.asarray(codecs.empty_video_latent(1, 32, 32))[0, 0]
  np.testing.assert_allclose(k[..., c:2 * c], np.broadcast_to(empty, k[..., c:2 * c].shape))
  assert not k[..., 2 * c].any() and not terms["keyframe_keep"].any()   # always generated
  assert inputs["video"][:, 0, ..., 2 * c].all()   # while i2v keeps low-res frame 0


@pytest.mark.parametrize("field,value,expect", [
    ("keyframes.scale", 3, "keyframes.scale"),     # 64 does not divide by 3
    ("keyframes.scale", 32, "keyframes.scale"),    # 2x2 low-res: below the AE's factor 4
    ("keyframes.frames", (0, 16), "keyframes.frames"),
    ("model.patch_size_t", 2, "model.patch_size_t"),
    ("data.format", "latents", "data.format"),
])
def test_config_errors_name_the_field(field, value, expect):
  c = tiny_base.get_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert e.value.field == expect
