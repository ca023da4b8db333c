"""Task masks and the Concat(V, I, M) layout (skyreels_jax/tasks/masks.py)."""

import functools

import jax
import numpy as np

from skyreels_jax.tasks import masks

GRID = (5, 4, 6)          # latent (T, h, w)
DRAWS = 24


@functools.partial(jax.jit, static_argnums=(1, 2))
def video_masks(task, grid, draws, seed=0):
  """`draws` masks of one task (an index, traced: one compile serves every task)."""
  rngs = jax.random.split(jax.random.key(seed), draws)
  return jax.vmap(lambda r: masks.video_task_mask(task, r, grid))(rngs)


@functools.partial(jax.jit, static_argnums=(1, 2))
def audio_masks(task, length, draws, seed=0):
  rngs = jax.random.split(jax.random.key(seed), draws)
  return jax.vmap(lambda r: masks.audio_task_mask(task, r, length))(rngs)


def draw(task, grid=GRID, draws=DRAWS):
  m = np.asarray(video_masks(masks.VIDEO_TASKS.index(task), grid, draws))
  assert m.shape == (draws, *grid, 1) and set(np.unique(m)) <= {0.0, 1.0}
  return m[..., 0]


def test_t2av_generates_everything():
  np.testing.assert_array_equal(draw("t2av"), 0.0)


def test_i2v_keeps_frame_zero_only():
  m = draw("i2v")
  np.testing.assert_array_equal(m[:, 0], 1.0)
  np.testing.assert_array_equal(m[:, 1:], 0.0)


def test_extend_keeps_a_prefix():
  m = draw("extend")
  per_frame = m[:, :, 0, 0]
  np.testing.assert_array_equal(m, np.broadcast_to(per_frame[..., None, None], m.shape))
  k = per_frame.sum(1)
  t = np.arange(GRID[0])
  np.testing.assert_array_equal(per_frame, (t[None] < k[:, None]).astype(np.float32))
  assert k.min() >= 1 and k.max() <= GRID[0] - 1     # something kept, something generated
  assert len(set(k.tolist())) >= 3                   # random prefix lengths


def test_start_end_keeps_first_and_last_frames():
  m = draw("start_end")
  np.testing.assert_array_equal(m[:, [0, -1]], 1.0)
  np.testing.assert_array_equal(m[:, 1:-1], 0.0)


def test_inpaint_generates_a_box_and_keeps_the_rest():
  m = draw("inpaint")
  shapes = set()
  for i in range(DRAWS):
    zeros = np.argwhere(m[i] == 0)
    assert len(zeros) > 0
    lo, hi = zeros.min(0), zeros.max(0) + 1
    box = np.zeros(GRID, bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    np.testing.assert_array_equal(m[i] == 0, box)       # the zeros are exactly a box
    assert hi[1] - lo[1] >= GRID[1] // 4 and hi[2] - lo[2] >= GRID[2] // 4
    shapes.add(tuple(lo) + tuple(hi))
  assert len(shapes) > DRAWS // 2                       # boxes are random
  # Boxes over random time spans, not only the whole clip.
  assert any(s[3] - s[0] < GRID[0] for s in shapes)


def test_inpaint_stroke_generates_free_form_regions_over_a_span():
  m = draw("inpaint_stroke", grid=(5, 12, 12))
  areas = set()
  for i in range(DRAWS):
    gen = m[i] == 0
    frames = np.flatnonzero(gen.any((1, 2)))
    assert len(frames) > 0
    np.testing.assert_array_equal(frames, np.arange(frames[0], frames[-1] + 1))  # one span
    for f in frames:   # the same strokes on every frame of the span
      np.testing.assert_array_equal(gen[f], gen[frames[0]])
    area = gen[frames[0]]
    ys, xs = np.nonzero(area)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    areas.add(int(area.sum()))
    assert 0 < area.sum() < 12 * 12
    if box > 16:
      assert area.sum() < box    # strokes, not a filled box
  assert len(areas) > DRAWS // 2


def test_inpaint_temporal_regenerates_whole_frames_of_a_span():
  m = draw("inpaint_temporal")
  per_frame = m[:, :, 0, 0]
  np.testing.assert_array_equal(m, np.broadcast_to(per_frame[..., None, None], m.shape))
  for row in per_frame:
    zeros = np.flatnonzero(row == 0)
    assert len(zeros) >= 1
    np.testing.assert_array_equal(zeros, np.arange(zeros[0], zeros[-1] + 1))


def test_modality_drop_tasks_generate_everything():
  np.testing.assert_array_equal(draw("t2v"), 0.0)
  np.testing.assert_array_equal(draw("t2a"), 0.0)


def test_images_draw_only_image_tasks():
  fn = jax.jit(lambda rng: masks.sample_task_masks(
      rng, 512, video_grid=(1, 4, 4), audio_length=None,
      video_mixture={"i2v": 1.0, "extend": 1.0, "inpaint": 1.0, "t2av": 1.0}))
  _, _, tasks = fn(jax.random.key(0))
  names = {masks.VIDEO_TASKS[i] for i in np.unique(np.asarray(tasks))}
  assert names == {"inpaint", "t2av"}
  fn = jax.jit(lambda rng: masks.sample_task_masks(
      rng, 64, video_grid=(1, 4, 4), audio_length=None, video_mixture={"i2v": 1.0}))
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0))[2]),
                                masks.VIDEO_TASKS.index("t2av"))


def test_task_names_and_indices_agree():
  @functools.partial(jax.jit)
  def both(rng):
    by_name = [masks.video_task_mask(n, rng, (3, 2, 2)) for n in masks.VIDEO_TASKS]
    by_index = [masks.video_task_mask(i, rng, (3, 2, 2)) for i in range(len(masks.VIDEO_TASKS))]
    return by_name, by_index
  by_name, by_index = both(jax.random.key(3))
  for a, b in zip(by_name, by_index):
    np.testing.assert_array_equal(a, b)


def test_audio_masks():
  n = 16
  none = np.asarray(audio_masks(masks.AUDIO_TASKS.index("none"), n, DRAWS))
  assert none.shape == (DRAWS, n, 1)
  np.testing.assert_array_equal(none, 0.0)
  ext = np.asarray(audio_masks(masks.AUDIO_TASKS.index("a_extend"), n, DRAWS))[..., 0]
  k = ext.sum(1)
  np.testing.assert_array_equal(ext, (np.arange(n)[None] < k[:, None]).astype(np.float32))
  assert k.min() >= 1 and k.max() <= n - 1 and len(set(k.tolist())) >= 3
  inp = np.asarray(audio_masks(masks.AUDIO_TASKS.index("a_inpaint"), n, DRAWS))[..., 0]
  for row in inp:
    zeros = np.flatnonzero(row == 0)
    assert len(zeros) >= max(1, n // 8)
    np.testing.assert_array_equal(zeros, np.arange(zeros[0], zeros[-1] + 1))  # one span
    assert row.sum() == n - len(zeros)


# --- Mixtures.

def sample(batch, mixture, audio_length=None, audio_mixture=None, seed=0):
  fn = jax.jit(lambda rng: masks.sample_task_masks(
      rng, batch, video_grid=(3, 2, 2), audio_length=audio_length, video_mixture=mixture,
      audio_mixture=audio_mixture))
  v, a, tasks = fn(jax.random.key(seed))
  return np.asarray(v)[..., 0], None if a is None else np.asarray(a)[..., 0], np.asarray(tasks)


def test_single_task_mixture_gives_only_that_task():
  v, a, tasks = sample(64, {"i2v": 1.0, "t2av": 0.0})
  np.testing.assert_array_equal(tasks, masks.VIDEO_TASKS.index("i2v"))
  np.testing.assert_array_equal(v[:, 0], 1.0)
  np.testing.assert_array_equal(v[:, 1:], 0.0)
  assert a is None


def test_task_frequencies_follow_the_weights():
  weights = {"t2av": 5.0, "i2v": 2.0, "extend": 0.0, "start_end": 1.0, "inpaint": 2.0,
             "inpaint_stroke": 1.0, "inpaint_temporal": 1.0, "t2v": 1.0, "t2a": 1.0}
  v, a, tasks = sample(4000, weights, audio_length=8)
  freq = np.bincount(tasks, minlength=len(masks.VIDEO_TASKS)) / len(tasks)
  want = np.array([weights.get(n, 0.0) for n in masks.VIDEO_TASKS]) / sum(weights.values())
  np.testing.assert_allclose(freq, want, atol=0.03)
  assert freq[masks.VIDEO_TASKS.index("extend")] == 0.0
  # Each example's mask is its task's mask.
  t2av, i2v, start_end, inpaint = (tasks == masks.VIDEO_TASKS.index(n)
                                   for n in ("t2av", "i2v", "start_end", "inpaint"))
  np.testing.assert_array_equal(v[t2av], 0.0)
  np.testing.assert_array_equal(v[i2v].sum((1, 2, 3)), 4.0)
  np.testing.assert_array_equal(v[i2v][:, 0], 1.0)
  np.testing.assert_array_equal(v[start_end][:, [0, 2]], 1.0)
  np.testing.assert_array_equal(v[start_end][:, 1], 0.0)
  assert np.all(v[inpaint].min((1, 2, 3)) == 0.0)
  # Audio: regenerated in full by default.
  assert a.shape == (4000, 8)
  np.testing.assert_array_equal(a, 0.0)


def test_audio_mixture_and_unnormalised_weights():
  v, a, tasks = sample(2000, {"i2v": 3.0, "t2av": 1.0}, audio_length=8,
                       audio_mixture={"a_extend": 1.0}, seed=1)
  np.testing.assert_allclose(np.mean(tasks == masks.VIDEO_TASKS.index("i2v")), 0.75, atol=0.03)
  k = a.sum(1)
  np.testing.assert_array_equal(a, (np.arange(8)[None] < k[:, None]).astype(np.float32))
  assert k.min() >= 1


# --- Concat(V, I, M).

def test_condition_latent_and_channel_concat():
  rng = np.random.default_rng(0)
  z0 = rng.normal(size=(2, 3, 2, 2, 4)).astype(np.float32)
  noisy = rng.normal(size=z0.shape).astype(np.float32)
  empty = np.full((1, 3, 2, 2, 4), -1.0, np.float32)     # latent of black frames
  keep = np.zeros((2, 3, 2, 2, 1), np.float32)
  keep[0, 0] = 1.0                                          # i2v
  keep[1, [0, 2]] = 1.0                                     # start_end
  cond = np.asarray(masks.condition_latent(z0, keep, empty))
  np.testing.assert_array_equal(cond[0, 0], z0[0, 0])
  np.testing.assert_array_equal(cond[0, 1:], -1.0)
  np.testing.assert_array_equal(cond[1, [0, 2]], z0[1, [0, 2]])
  np.testing.assert_array_equal(cond[1, 1], -1.0)
  x = np.asarray(masks.channel_concat(noisy, cond, keep))
  assert x.shape == (2, 3, 2, 2, 2 * 4 + 1)
  np.testing.assert_array_equal(x[..., :4], noisy)
  np.testing.assert_array_equal(x[..., 4:8], cond)
  np.testing.assert_array_equal(x[..., 8:], keep)

