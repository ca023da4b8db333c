"""From a batch of clips to model inputs and loss terms (skyreels_jax/tasks/examples.py)."""

import jax
import numpy as np
import pytest

from configs import tiny
from skyreels_jax.config import derive, validate
from skyreels_jax.data import references
from skyreels_jax.tasks import VIDEO_TASKS
from skyreels_jax.tasks import examples
from skyreels_jax.tasks.examples import make_codecs, training_inputs
from skyreels_jax.tasks.refiner import still_latents

B = 4


def config_with(**data):
  c = tiny.get_config()
  c.data.batch_size = B
  for k, v in data.items():
    c.data[k] = v
  validate(c)
  return c


def make_batch(config, tokenizer, seed=0):
  geom, _ = derive(config)
  rng = np.random.default_rng(seed)
  d = config.data
  texts = ["a red ball <sfx> bounce </sfx>", "rain", "<dialogue> hello there </dialogue>",
           "waves at night"]
  tok = tokenizer.batch(texts[:B])
  batch = {
      "video": rng.uniform(-1, 1, (B, d.num_frames, d.height, d.width, 3)).astype(np.float32),
      "audio": rng.uniform(-1, 1, (B, geom.num_samples, d.audio_channels)).astype(np.float32),
      "text_ids": tok["text_ids"], "text_mask": tok["text_mask"]}
  if references.enabled(d):   # what the loader adds: other pixels than the target's
    fields = references.batch_fields(d, B, d.height, d.width)
    for k, (shape, dtype) in fields.items():
      batch[k] = rng.uniform(-1, 1, shape).astype(dtype)
    # Examples 0..3 drew: 2 images, none, a clip, 1 image (+ sound for 0 and 2).
    batch["ref_image_count"] = np.array([2, 0, 0, 1], np.int32)
    batch["has_ref_video"] = np.array([False, False, True, False])
    batch["has_ref_audio"] = np.array([True, False, True, False])
  return batch


def run(config, seed=0):
  codecs, tokenizer = make_codecs(config)
  batch = make_batch(config, tokenizer)
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs, use_audio=True))
  inputs, terms = fn(batch, jax.random.key(seed))
  to_np = lambda t: jax.tree.map(np.asarray, t)
  return to_np(inputs), to_np(terms), batch, codecs, derive(config)[0]


@pytest.fixture(scope="module")
def i2v_with_refs():
  return run(config_with(tasks={"i2v": 1.0, "t2av": 0.0}, caption_dropout=0.0,
                         refs={"none": 0.4, "image": 0.3, "video": 0.3}, ref_images=2,
                         ref_video_frames=3, audio_ref_rate=0.5, audio_ref_seconds=0.05))


def test_inputs_are_concat_of_noisy_condition_and_mask(i2v_with_refs):
  inputs, terms, batch, codecs, geom = i2v_with_refs
  c, ca = geom.video_channels, geom.audio_channels
  assert (c, ca) == (48, 160)
  assert inputs["video"].shape == (B, *geom.video_grid, 2 * c + 1)
  assert inputs["audio"].shape == (B, geom.audio_length, 2 * ca + 1)
  t = terms["t"]
  assert t.shape == (B,) and np.all((t > 0) & (t < 1))
  np.testing.assert_allclose(inputs["video_timestep"], 1000 * (1 - t), rtol=1e-6)
  np.testing.assert_allclose(inputs["audio_timestep"], 1000 * (1 - t), rtol=1e-6)
  # The identity autoencoders: latents are the pixels / samples rearranged.
  z0 = terms["video_z0"]
  np.testing.assert_array_equal(z0, np.asarray(codecs.video_ae.encode(batch["video"])))
  np.testing.assert_array_equal(terms["audio_z0"], batch["audio"].reshape(B, -1, ca))
  # V: the noisy latent.
  tb = t[:, None, None, None, None]
  np.testing.assert_allclose(inputs["video"][..., :c], tb * z0 + (1 - tb) * terms["video_eps"],
                             rtol=1e-5, atol=1e-5)
  ta = t[:, None, None]
  np.testing.assert_allclose(inputs["audio"][..., :ca],
                             ta * terms["audio_z0"] + (1 - ta) * terms["audio_eps"],
                             rtol=1e-5, atol=1e-5)
  assert abs(float(terms["video_eps"].std()) - 1.0) < 0.05


def test_i2v_mixture_keeps_frame_zero(i2v_with_refs):
  inputs, terms, _, _, geom = i2v_with_refs
  c, ca = geom.video_channels, geom.audio_channels
  np.testing.assert_array_equal(terms["tasks"], 1)
  keep = terms["video_keep"]
  np.testing.assert_array_equal(keep[:, 0], 1.0)
  np.testing.assert_array_equal(keep[:, 1:], 0.0)
  np.testing.assert_array_equal(inputs["video"][..., 2 * c:], keep)
  # I: the clean first frame, the latent of black frames (-1 in pixel space) elsewhere.
  cond = inputs["video"][..., c:2 * c]
  np.testing.assert_array_equal(cond[:, 0], terms["video_z0"][:, 0])
  np.testing.assert_array_equal(cond[:, 1:], -1.0)
  # Audio is regenerated in full: M = 0, I = silence.
  np.testing.assert_array_equal(terms["audio_keep"], 0.0)
  np.testing.assert_array_equal(inputs["audio"][..., 2 * ca:], 0.0)
  np.testing.assert_array_equal(inputs["audio"][..., ca:2 * ca], 0.0)


def test_references_are_the_loaders_pixels_encoded_as_at_sampling(i2v_with_refs):
  """Image references are stills, the clip is encoded whole, each right-aligned in one set
  of slots next to the target; sound likewise; none of it is the target's latents."""
  inputs, terms, batch, codecs, geom = i2v_with_refs
  c, ca = geom.video_channels, geom.audio_channels
  refs, valid = inputs["video_refs"], inputs["video_ref_valid"]
  assert refs.shape == (B, 3, *geom.video_grid[1:], 2 * c + 1) and valid.shape == (B, 3)
  np.testing.assert_array_equal(valid, [[0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 1]])
  np.testing.assert_array_equal(refs[..., 2 * c:], 1.0)              # M = 1: never generated
  np.testing.assert_array_equal(refs[..., :c], refs[..., c:2 * c])    # Concat(ref, ref, 1)
  stills = np.asarray(still_latents(codecs.video_ae, batch["ref_images"]))
  clip = np.asarray(codecs.video_ae.encode(batch["ref_video"]))
  np.testing.assert_allclose(refs[0, 1:, ..., :c], stills[0], atol=1e-6)
  np.testing.assert_allclose(refs[3, 2, ..., :c], stills[3, 1], atol=1e-6)
  np.testing.assert_allclose(refs[2, ..., :c], clip[2], atol=1e-6)
  np.testing.assert_array_equal(refs[~valid][..., :2 * c], 0.0)      # unused slots: zeros
  z0 = terms["video_z0"]
  for b, s in zip(*np.nonzero(valid)):
    assert not any(np.allclose(refs[b, s, ..., :c], z0[b, f]) for f in range(z0.shape[1]))
  arefs, avalid = inputs["audio_refs"], inputs["audio_ref_valid"]
  assert arefs.shape[0] == B and avalid.shape == arefs.shape[:2]
  np.testing.assert_array_equal(avalid, np.broadcast_to(batch["has_ref_audio"][:, None],
                                                        avalid.shape))
  za = np.asarray(codecs.audio_ae.encode(batch["ref_audio"]))
  np.testing.assert_allclose(arefs[0, -za.shape[1]:, :ca], za[0], atol=1e-6)
  np.testing.assert_array_equal(arefs[1, :, :2 * ca], 0.0)


def test_caption_dropout(i2v_with_refs):
  inputs, _, batch, codecs, _ = i2v_with_refs
  np.testing.assert_array_equal(inputs["text_ids"], batch["text_ids"])       # rate 0
  np.testing.assert_array_equal(inputs["text_mask"], batch["text_mask"])
  assert batch["text_mask"].sum(1).min() >= 2
  dropped, _, _, _, _ = run(config_with(caption_dropout=0.999))
  null_ids, null_mask = np.asarray(codecs.null_text_ids), np.asarray(codecs.null_text_mask)
  assert null_mask.sum() == 1                                               # only BOS
  np.testing.assert_array_equal(dropped["text_ids"], np.broadcast_to(null_ids, (B, len(null_ids))))
  np.testing.assert_array_equal(dropped["text_mask"],
                                np.broadcast_to(null_mask, (B, len(null_mask))))
  # Default mixture (t2av only), no references.
  assert "video_refs" not in dropped and "audio_refs" not in dropped
  np.testing.assert_array_equal(dropped["video"][..., -1], 0.0)


def test_audio_task_mixture_reaches_the_audio_masks():
  config = config_with(audio_tasks={"none": 0.0, "a_extend": 1.0, "a_inpaint": 0.0})
  inputs, terms, _, _, geom = run(config)
  keep = terms["audio_keep"][..., 0]                      # (B, Ta)
  assert keep.shape == (B, geom.audio_length)
  for row in keep:
    k = int(row.sum())
    assert 1 <= k < geom.audio_length                      # a kept prefix, the rest generated
    np.testing.assert_array_equal(row[:k], 1.0)
    np.testing.assert_array_equal(row[k:], 0.0)
  np.testing.assert_array_equal(inputs["audio"][..., -1], keep)   # M channel of Concat(V, I, M)


def test_dropped_streams_are_pure_noise_with_no_loss():
  """T2V drops the audio, T2A the video; a clip without sound always drops its audio (and
  a T2A draw on it becomes T2V); a sound-only clip drops its video."""
  config = config_with(tasks={"t2v": 1.0, "t2a": 1.0}, caption_dropout=0.0,
                       refs={"none": 0.0, "image": 1.0}, audio_ref_rate=1.0,
                       audio_ref_seconds=0.05)
  codecs, tokenizer = make_codecs(config)
  batch = make_batch(config, tokenizer)
  batch["has_audio"] = np.array([True, True, False, True])
  batch["has_video"] = np.array([True, True, True, False])
  batch["ref_image_count"] = np.ones((B,), np.int32)
  batch["has_ref_audio"] = np.ones((B,), bool)
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs, use_audio=True))
  seen = set()
  for seed in range(6):
    inputs, terms = jax.tree.map(np.asarray, fn(batch, jax.random.key(seed)))
    t2a = terms["tasks"] == VIDEO_TASKS.index("t2a")
    want_drop_v = (t2a & batch["has_audio"]) | ~batch["has_video"]
    want_drop_a = (~t2a | ~batch["has_audio"]) & ~want_drop_v
    np.testing.assert_array_equal(terms["drop_video"], want_drop_v)
    np.testing.assert_array_equal(terms["drop_audio"], want_drop_a)
    assert not np.any(want_drop_v & want_drop_a)
    for stream, drop in (("video", want_drop_v), ("audio", want_drop_a)):
      c = (inputs[stream].shape[-1] - 1) // 2
      # Dropped: timestep 1000 (t = 0, pure noise: the input is the noise itself), mask 0,
      # loss mask all ones; kept streams train normally.
      np.testing.assert_allclose(inputs[f"{stream}_timestep"][drop], 1000.0)
      assert np.all(inputs[f"{stream}_timestep"][~drop] < 1000.0)
      np.testing.assert_array_equal(inputs[stream][drop][..., -1], 0.0)
      np.testing.assert_allclose(inputs[stream][drop][..., :c], terms[f"{stream}_eps"][drop],
                                 atol=1e-6)
      np.testing.assert_array_equal(terms[f"{stream}_keep"][drop], 1.0)
      np.testing.assert_array_equal(terms[f"{stream}_keep"][~drop], 0.0)
    assert not inputs["video_ref_valid"][want_drop_v].any()
    assert not inputs["audio_ref_valid"][want_drop_a].any()
    seen.update(zip(want_drop_v.tolist(), want_drop_a.tolist()))
  assert seen == {(True, False), (False, True)}


def test_image_batches_have_no_audio_stream():
  config = config_with(num_frames=1, caption_dropout=0.0)
  codecs, tokenizer = make_codecs(config)
  batch = make_batch(config, tokenizer)
  del batch["audio"]
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs, use_audio=True))
  inputs, terms = fn(batch, jax.random.key(0))
  assert "audio" not in inputs and terms["audio_keep"] is None
  assert inputs["video"].shape[1] == 1


def test_training_shift_follows_the_batch_size_in_auto_mode():
  """flow.shift_mode=auto: the shift of a batch is flow.shift * sqrt(video tokens / base)."""
  config = tiny.get_config()
  z0 = np.zeros((2, 8, 8, 8, 4), np.float32)     # 8 x (8/2) x (8/2) = 128 video tokens
  assert examples._shift(config, z0) == config.flow.shift
  config.flow.shift_mode, config.flow.shift, config.flow.shift_base_tokens = "auto", 2.0, 32
  assert examples._shift(config, z0) == pytest.approx(4.0)


def test_empty_latents_are_listed_once_and_the_step_uses_the_given_ones():
  """training_inputs asks for the black clip's and silence's latents; bound precomputed ones
  (here a sentinel) are what lands in the condition channels, with no encode in the step."""
  config = config_with(tasks={"i2v": 1.0, "t2av": 0.0}, caption_dropout=0.0)
  codecs, tokenizer = make_codecs(config)
  batch = make_batch(config, tokenizer)
  geom, _ = derive(config)
  d = config.data
  shapes = examples.needed_empty_latents(config, codecs, batch, codecs.frozen_params(), True)
  assert shapes == {
      f"video/{d.num_frames}x{d.height}x{d.width}": ("video", (d.num_frames, d.height, d.width)),
      f"audio/{geom.num_samples}x{d.audio_channels}": ("audio", (geom.num_samples,
                                                                   d.audio_channels))}
  real = examples.compute_empty_latents(codecs, codecs.frozen_params(), shapes)
  np.testing.assert_array_equal(real[f"video/{d.num_frames}x{d.height}x{d.width}"],
                                codecs.empty_video_latent(d.num_frames, d.height, d.width))
  sentinel = {k: np.full(v.shape, 123.0, np.float32) for k, v in real.items()}
  bound = codecs.bind({**codecs.frozen_params(), "empties": sentinel})
  inputs, terms = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=bound,
                                                       use_audio=True))(batch,
                                                                        jax.random.key(0))
  c = geom.video_channels
  cond, keep = np.asarray(inputs["video"][..., c:2 * c]), np.asarray(inputs["video"][..., -1:])
  assert np.all(np.where(keep < 0.5, cond, 123.0) == 123.0) and (keep < 0.5).any()
  with pytest.raises(KeyError, match="was not precomputed"):
    bound.empty_video_latent(1, d.height, d.width)


def test_uint8_pixels_from_the_loader_give_the_float_inputs():
  """The loader sends uint8 pixels; scaled on the device they give exactly the inputs of the
  same clip sent as [-1, 1] floats (the host-side scaling they replace)."""
  config = config_with(num_frames=1, caption_dropout=0.0)
  codecs, tokenizer = make_codecs(config)
  batch = make_batch(config, tokenizer)
  del batch["audio"]
  pixels = np.random.default_rng(3).integers(0, 256, batch["video"].shape, dtype=np.uint8)
  fn = jax.jit(lambda b, r: training_inputs(b, r, config=config, codecs=codecs, use_audio=True))
  wire = fn(dict(batch, video=pixels), jax.random.key(0))
  host = fn(dict(batch, video=pixels.astype(np.float32) / 127.5 - 1.0), jax.random.key(0))
  for a, b in zip(jax.tree.leaves(wire), jax.tree.leaves(host)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert float(np.abs(np.asarray(wire[0]["video"])).max()) > 0.1   # not all zeros
