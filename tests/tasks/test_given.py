"""The data-given tasks' latent-grid rule and fallback (skyreels_jax/tasks/given.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skyreels_jax.tasks import given
from skyreels_jax.tasks.masks import VIDEO_TASKS, sample_task_masks


def test_video_rule_exact_on_a_causal_clip():
  """5 frames (causal, factor 4: latent 0 = frame 0, latent 1 = frames 1-4), 4x4 pixels on
  a 2x2 grid: one generated pixel anywhere in a cell's pixels generates the cell."""
  keep = np.ones((5, 4, 4), np.uint8)
  keep[0, 0, 0] = 0        # frame 0, cell (0, 0)  -> latent (0, 0, 0)
  keep[3, 3, 2] = 0        # frame 3, cell (1, 1)  -> latent (1, 1, 1)
  got = given.video_keep(keep, (2, 2, 2), 4)[..., 0]
  want = np.ones((2, 2, 2), np.float32)
  want[0, 0, 0] = 0
  want[1, 1, 1] = 0
  np.testing.assert_array_equal(got, want)
  # The same rule traced (training) as on the host (sampler, encode_latents).
  traced = jax.jit(lambda m: given.video_keep(m, (2, 2, 2), 4))(jnp.asarray(keep))
  np.testing.assert_array_equal(np.asarray(traced)[..., 0], want)


def test_video_rule_blocks_and_static_masks():
  keep = np.ones((4, 2, 2), np.uint8)
  keep[1, 0, 1] = 0                      # block VAE, factor 2: frames 0-1 -> latent 0
  got = given.video_keep(keep, (2, 1, 1), 2)[..., 0]
  np.testing.assert_array_equal(got, [[[0.0]], [[1.0]]])
  static = np.ones((1, 4, 4), np.uint8)
  static[0, 2, 0] = 0                   # one frame: on every latent frame
  got = given.video_keep(static, (3, 2, 2), 4)[..., 0]
  np.testing.assert_array_equal(got, np.broadcast_to([[1, 1], [0, 1]], (3, 2, 2)))
  with pytest.raises(ValueError, match="6-frame mask"):
    given.video_keep(np.ones((6, 4, 4), np.uint8), (2, 2, 2), 4)


def test_audio_rule_with_a_padded_tail():
  keep = np.ones((10,), np.uint8)         # 3 latents of hop 4 (the tail padded, kept)
  keep[5] = 0
  np.testing.assert_array_equal(given.audio_keep(keep, 3)[:, 0], [1, 0, 1])
  keep = given.span_keep(10, 4, 1.0, 1.5)     # samples at 4 Hz: [1, 1.5) s = samples 4, 5
  np.testing.assert_array_equal(keep, [1, 1, 1, 1, 0, 0, 1, 1, 1, 1])


def test_substitute_uses_records_and_falls_back():
  """Examples drawn for edit_pair take the record's mask where they have mask and source,
  else the fallback task and its mask; the count of fallbacks is what the metric shows."""
  b, grid = 4, (2, 2, 2)
  edit = VIDEO_TASKS.index("edit_pair")
  tasks = jnp.array([edit, edit, edit, VIDEO_TASKS.index("t2av")])
  keep = jnp.zeros((b, *grid, 1))
  given_keep = jnp.full((b, *grid, 1), 0.5)
  fallback_keep = jnp.full((b, *grid, 1), 0.25)
  has = {"has_mask": jnp.array([True, True, False, True]),
         "has_source": jnp.array([True, False, True, True])}
  tasks2, keep2, used, fell = given.substitute(
      tasks, keep, names=("edit_pair",), task_names=VIDEO_TASKS, given_keep=given_keep,
      has=has, fallback="inpaint", fallback_keep=fallback_keep)
  np.testing.assert_array_equal(used, [True, False, False, False])
  np.testing.assert_array_equal(fell, [False, True, True, False])
  np.testing.assert_array_equal(tasks2, [edit, VIDEO_TASKS.index("inpaint"),
                                         VIDEO_TASKS.index("inpaint"), tasks[3]])
  np.testing.assert_array_equal(np.asarray(keep2)[:, 0, 0, 0, 0], [0.5, 0.25, 0.25, 0.0])


def test_draws_without_given_weights_are_unchanged():
  """Listing the data-given tasks at weight 0 leaves the draw of the other tasks as it was
  (the same logits, not more of them), so older configs train exactly as before."""
  mix = {"t2av": 1.0, "inpaint": 1.0, "i2v": 1.0}
  with_zeros = dict(mix, inpaint_given=0.0, edit_pair=0.0, ref_inpaint=0.0)
  key = jax.random.key(3)
  a = sample_task_masks(key, 16, video_grid=(2, 2, 2), audio_length=None, video_mixture=mix)
  b = sample_task_masks(key, 16, video_grid=(2, 2, 2), audio_length=None,
                        video_mixture=with_zeros)
  np.testing.assert_array_equal(a[2], b[2])
  # The draw is the categorical over the nine original tasks: pinned on this key.
  old = jax.random.categorical(jax.random.split(key, 4)[0],
                               jnp.log(jnp.array([1, 1, 0, 0, 1, 0, 0, 0, 0]) / 3.0), shape=(16,))
  np.testing.assert_array_equal(a[2], old)


def test_train_inputs_take_the_records_mask_source_prompt_and_references():
  """training_inputs on a batch as the loader makes it (data/given.py): an edit_pair
  example's condition I is its SOURCE where its mask keeps (not the target), its prompt the
  edit's tokens; a ref_inpaint example's references are its record's stills; the audio
  keep is the record's audio mask; examples without the fields fall back, counted."""
  from configs import tiny
  from skyreels_jax.config import derive, validate
  from skyreels_jax.tasks.examples import make_codecs, training_inputs
  from skyreels_jax.tasks.refiner import still_latents
  c = tiny.get_config()
  for name in c.data.tasks:
    c.data.tasks[name] = 0.0
  c.data.tasks.edit_pair = c.data.tasks.ref_inpaint = 1.0
  c.data.audio_tasks.none, c.data.audio_tasks.a_inpaint_given = 0.0, 1.0
  c.data.caption_dropout, c.data.ref_images = 0.0, 2
  validate(c)
  geom, _ = derive(c)
  codecs, tokenizer = make_codecs(c)
  d, b = c.data, 4
  rng = np.random.default_rng(0)
  shape = (b, d.num_frames, d.height, d.width)
  mask = np.ones(shape, np.float32)
  mask[:, :, 8:24, 8:24] = 0              # latent cells 2..5 of 8: whole cells
  audio_mask = np.ones((b, geom.num_samples), np.float32)
  audio_mask[:, :1600] = 0                # the first 10 audio latents (hop 160)
  text = tokenizer.batch(["caption"] * b)
  edit = tokenizer.batch(["make the red circle blue"] * b)
  batch = dict(
      video=rng.uniform(-1, 1, shape + (3,)).astype(np.float32),
      source_video=rng.uniform(-1, 1, shape + (3,)).astype(np.float32),
      audio=rng.uniform(-1, 1, (b, geom.num_samples, 1)).astype(np.float32),
      text_ids=text["text_ids"], text_mask=text["text_mask"],
      edit_text_ids=edit["text_ids"], edit_text_mask=edit["text_mask"],
      given_mask=mask, has_mask=np.array([True, True, True, False]),
      has_source=np.ones(b, bool), has_refs=np.array([True, True, False, True]),
      given_refs=rng.uniform(-1, 1, (b, 2, d.height, d.width, 3)).astype(np.float32),
      given_ref_count=np.array([1, 2, 0, 1], np.int32),
      given_audio_mask=audio_mask, has_audio_mask=np.array([True, False, True, True]))
  fn = jax.jit(lambda x, r: training_inputs(x, r, config=c, codecs=codecs, use_audio=True))
  seen = set()
  for seed in range(6):
    inputs, terms = jax.tree.map(np.asarray, fn(batch, jax.random.key(seed)))
    ch = geom.video_channels
    keep = inputs["video"][..., -1]
    cond = inputs["video"][..., ch:2 * ch]
    z_src = np.asarray(codecs.video_ae.encode(batch["source_video"]))
    z_tgt = np.asarray(codecs.video_ae.encode(batch["video"]))
    fell = 0
    for i in range(b):
      task = VIDEO_TASKS[terms["tasks"][i]]
      if task in ("edit_pair", "ref_inpaint"):
        want = given.video_keep(mask[i], geom.video_grid, 1)[..., 0]
        np.testing.assert_array_equal(keep[i], want)
        kept = want > 0.5
        np.testing.assert_allclose(cond[i][kept], (z_src if task == "edit_pair"
                                                   else z_tgt)[i][kept], atol=1e-6)
        prompt = edit if task == "edit_pair" else text
        np.testing.assert_array_equal(inputs["text_ids"][i], prompt["text_ids"][i])
        seen.add(task)
      else:
        assert task == "inpaint"     # the fallback of records missing a field
        fell += 1
      refs_valid = inputs["video_ref_valid"][i]
      if task == "ref_inpaint":
        n = batch["given_ref_count"][i]
        assert refs_valid.sum() == n and refs_valid[-n:].all()
        want_refs = np.asarray(still_latents(codecs.video_ae, batch["given_refs"][i:i + 1]))[0]
        np.testing.assert_allclose(inputs["video_refs"][i, -n:, ..., :ch], want_refs[-n:],
                                   atol=1e-6)
      else:
        assert not refs_valid.any()
    a_keep = inputs["audio"][..., -1]
    for i in range(b):
      if batch["has_audio_mask"][i]:
        np.testing.assert_array_equal(a_keep[i, :10], 0)
        np.testing.assert_array_equal(a_keep[i, 10:], 1)
      else:
        fell += 1
    assert terms["task_fallbacks"] == fell
  assert seen == {"edit_pair", "ref_inpaint"}
