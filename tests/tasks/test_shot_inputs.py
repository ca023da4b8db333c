"""From shot-tagged captions to the model's shot inputs in training (tasks/shots.py through
tasks/examples.training_inputs)."""

import jax
import numpy as np
import pytest

from configs import tiny
from skyreels_jax.config import derive, validate
from skyreels_jax.core import ConfigError
from skyreels_jax.data import shots
from skyreels_jax.tasks import shots as shots_lib
from skyreels_jax.tasks.examples import make_codecs, training_inputs

B = 4
SHOTS = [[dict(start=0.0, end=1.0, text="a red circle"), dict(start=1.0, end=2.0,
                                                               text="a blue square")],
         [dict(start=0.0, end=0.5, text="rain"), dict(start=0.5, end=1.5, text="sun"),
          dict(start=1.5, end=2.0, text="night")],
         None,
         [dict(start=0.25, end=2.0, text="waves")]]


def _config(**data):
  c = tiny.get_config()
  c.data.batch_size = B
  c.data.shot_captions, c.model.shot_attention, c.text.max_length = True, True, 64
  for k, v in data.items():
    c.data[k] = v
  validate(c)
  return c


def _inputs(config):
  codecs, tokenizer = make_codecs(config)
  geom, _ = derive(config)
  d = config.data
  rng = np.random.default_rng(0)
  texts = [shots.tagged_caption("<text>a clip</text>", s) for s in SHOTS]
  batch = {"video": rng.uniform(-1, 1, (B, d.num_frames, d.height, d.width, 3)).astype(
               np.float32),
           "audio": rng.uniform(-1, 1, (B, geom.num_samples, d.audio_channels)).astype(
               np.float32), **tokenizer.batch(texts)}
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs,
                                            use_audio=True))
  inputs, _ = fn(batch, jax.random.key(0))
  return jax.tree.map(np.asarray, inputs), batch, codecs, geom


def test_each_latent_frame_gets_its_shot_and_each_token_its_tag():
  config = _config(caption_dropout=0.0, max_shots_per_clip=3)
  inputs, batch, codecs, geom = _inputs(config)
  d = config.data
  t_latent = geom.video_grid[0]
  centres = shots_lib.latent_frame_centres(d.num_frames, t_latent,
                                           codecs.video_ae.temporal_factor)
  for b, clip_shots in enumerate(SHOTS):
    times = (centres + 0.5) / d.fps
    expected = [next((k + 1 for k, s in enumerate(clip_shots or [])
                      if s["start"] <= t < s["end"]), 0) for t in times]
    np.testing.assert_array_equal(inputs["video_shot"][b], expected)
    assert sorted(set(inputs["text_shot"][b])) == list(range(len(clip_shots or []) + 1))
  # the 2-shot clip's frames are split between its shots: 1 s of 2 s each
  assert set(inputs["video_shot"][0]) == {1, 2}
  np.testing.assert_array_equal(inputs["text_shot"], batch["text_shot"])


def test_dropped_captions_have_no_shots():
  inputs, _, _, _ = _inputs(_config(caption_dropout=0.999, max_shots_per_clip=3))
  assert not inputs["text_shot"].any() and not inputs["video_shot"].any()


def test_more_shots_than_the_model_tells_apart_is_refused():
  with pytest.raises(shots.ShotError, match="max_shots_per_clip=2"):
    _inputs(_config(caption_dropout=0.0, max_shots_per_clip=2))


def test_shot_attention_needs_shot_captions():
  c = tiny.get_config()
  c.model.shot_attention = True
  with pytest.raises(ConfigError, match="model.shot_attention"):
    validate(c)
