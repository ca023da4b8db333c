"""A tiny model overfit on four clips follows its conditions: on the generated region, a
sample given clip X's first frame (I2V), first latent frames (extension) or outside of a
mask (inpainting) is closer to clip X than a sample given the same condition zeroed, by at
least MARGIN. Captions are (almost always) dropped in training and empty at sampling, so
the condition is the only thing that says which clip to make. The sampler does not paste
the condition over the generated region (it holds kept positions only), so this fails if
the model ignores the channel-concat condition."""

import numpy as np
import pytest

from conftest import small_run_config, train_on_one_device

from skyreels_jax.data import records
from skyreels_jax.sample import conditions as C

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

STEPS = 400
MARGIN = 3.0       # error with the condition zeroed / error with it: at least this (measured:
                   # 4.7x I2V, 6.4x extension, 11x inpainting)


COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [230, 230, 40]])


def make_clips(frames: int, size: int) -> list[np.ndarray]:
  """Clip k: colour k brightening over time, darker towards the bottom: which clip it is
  shows in any frame and any region, the rest follows from that."""
  ramp_t = np.linspace(0.4, 1.0, frames)[:, None, None, None]
  ramp_y = np.linspace(1.0, 0.6, size)[None, :, None, None]
  return [np.broadcast_to(c * ramp_t * ramp_y, (frames, size, size, 3)).astype(np.uint8)
          for c in COLOURS]


def overfit_config(data_path: str):
  c = small_run_config(data_path)
  c.model.use_audio = False
  c.data.refs, c.data.audio_ref_rate = dict(none=1.0), 0.0
  c.data.tasks = dict(i2v=1.0, extend=1.0, inpaint=1.0)
  c.data.caption_dropout = 0.99
  c.train.steps = c.optim.decay_steps = c.train.checkpoint_every = STEPS
  c.train.log_every = STEPS
  c.optim.lr, c.optim.warmup_steps = 2e-3, 10
  c.optim.ema_decay = 0.9           # sampling uses the EMA: let it keep up with a short run
  return c


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
  from array_record.python import array_record_module
  root = tmp_path_factory.mktemp("overfit")
  config = overfit_config(str(root / "data"))
  clips = make_clips(config.data.num_frames, config.data.height)
  (root / "data").mkdir()
  writer = array_record_module.ArrayRecordWriter(str(root / "data" / "clips.array_record"),
                                                 "group_size:1")
  for clip in clips:
    writer.write(records.encode_clip(dict(video=clip, audio=None, fps=config.data.fps,
                                          sample_rate=config.data.sample_rate, caption="")))
  writer.close()
  sampler = train_on_one_device(__file__, "overfit_config", str(root / "data"),
                                str(root / "run"))
  return sampler, clips


def _errors(sampler, clips, make_condition):
  """Mean squared latent error on the generated region, with the condition and zeroed."""
  g, vae = sampler.geometry, sampler.codecs.video_ae
  settings = sampler.settings(num_steps=10, video_guidance=1.0)
  errors = {"given": [], "zeroed": []}
  for i, clip in enumerate(clips):
    target = np.asarray(vae.encode(C.to_unit(clip)[None]))
    grey = np.full_like(clip, 128)            # 128 -> 0.0: a zero condition latent
    for kind, source in (("given", clip), ("zeroed", grey)):
      cond = make_condition(g, source)
      out = sampler.generate([""], condition=cond, seeds=[i], settings=settings)
      free = np.broadcast_to(cond.keep_v < 0.5, target.shape)
      assert 0 < free.mean() < 1
      errors[kind].append(float(np.mean((out["video_latent"][free] - target[free]) ** 2)))
  return np.mean(errors["given"]), np.mean(errors["zeroed"])


@pytest.mark.parametrize("task", ["i2v", "extend", "inpaint"])
def test_overfit_model_follows_its_condition(overfit, task):
  sampler, clips = overfit
  tf = sampler.temporal_factor
  mask = np.zeros((16, 16), np.uint8)
  mask[4:12, 4:12] = 255
  make = {"i2v": lambda g, v: C.image_to_video(g, tf, v[0]),
          "extend": lambda g, v: C.extend(g, tf, 8.0, 1, v, None, 3),
          "inpaint": lambda g, v: C.inpaint(g, 1, v, mask)}[task]
  given, zeroed = _errors(sampler, clips, make)
  assert zeroed > MARGIN * given, (task, given, zeroed)
