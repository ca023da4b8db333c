"""flow.video_prediction / audio_prediction = "data" (x-prediction) in the train step: the
network's output is read as the clean latent of that stream, and the loss is the velocity
loss of the velocity it implies (diffusion/flow_matching.velocity_from)."""

import jax
import numpy as np

from conftest import small_run_config
from skyreels_jax.config import derive
from skyreels_jax.parallel.mesh import make_mesh, rules
from skyreels_jax.tasks.examples import make_codecs, training_inputs
from skyreels_jax.train.state import create_state, make_loss_fn, make_optimizer, step_key


def test_each_stream_reads_the_output_as_its_own_prediction():
  """A model whose every weight is 0 outputs 0. Read as a velocity the loss is
  |z0 - eps|^2; read as data, v_hat = -z_t / (1 - t) and v_hat - v = -z0 / (1 - t), so the
  loss is |z0|^2 / (1 - t)^2: each stream's loss switches alone."""
  config = small_run_config()
  config.data.caption_dropout = 0.0
  config.data.refs = dict(none=1.0, image=0.0, video=0.0)
  config.data.audio_ref_rate = 0.0
  tx = make_optimizer(config)
  mesh = make_mesh(config.mesh, devices=jax.devices()[:1])
  graphdef, state, _ = create_state(config, tx, mesh, rules(config))
  zeros = jax.tree.map(np.zeros_like, jax.device_get(state["params"]))
  geom, _ = derive(config)
  codecs, tokenizer = make_codecs(config)
  rng = np.random.default_rng(0)
  d = config.data
  batch = {"video": rng.uniform(-1, 1, (8, d.num_frames, d.height, d.width, 3)).astype(np.float32),
           "audio": rng.uniform(-0.5, 0.5, (8, geom.num_samples, 1)).astype(np.float32),
           **tokenizer.batch(["a red circle"] * 8)}
  key = step_key(config, 0)
  _, terms = training_inputs(batch, key, config=config, codecs=codecs, use_audio=True)
  gap = np.maximum(1.0 - np.asarray(terms["t"]), 0.05)

  def per_stream(z0, eps, keep, data: bool):
    z0, eps, w = np.asarray(z0), np.asarray(eps), 1.0 - np.asarray(keep)
    err = (z0 / gap.reshape((-1,) + (1,) * (z0.ndim - 1))) if data else (z0 - eps)
    w = np.broadcast_to(w, err.shape)
    axes = tuple(range(1, err.ndim))
    return ((err ** 2 * w).sum(axes) / np.maximum(w.sum(axes), 1.0)).mean()

  for video, audio in (("velocity", "velocity"), ("data", "velocity"), ("velocity", "data")):
    config.flow.video_prediction, config.flow.audio_prediction = video, audio
    loss_fn = make_loss_fn(config, graphdef, codecs, use_audio=True)
    _, parts = jax.jit(loss_fn)(zeros, batch, key, codecs.frozen_params())
    want_v = per_stream(terms["video_z0"], terms["video_eps"], terms["video_keep"],
                        video == "data")
    want_a = per_stream(terms["audio_z0"], terms["audio_eps"], terms["audio_keep"],
                        audio == "data")
    np.testing.assert_allclose(float(parts["loss_video"]), want_v, rtol=1e-4)
    np.testing.assert_allclose(float(parts["loss_audio"]), want_a, rtol=1e-4)
