"""Watching a run: validation during training (train/evaluate.py, data/split.py: a
held-out split never trained on, a validation loss that is the same figure on one device
and on a (2, 2, 2) mesh, and after a resume), samples during training (train/samples.py:
the sampler's own output for the EMA weights), a profile, W&B offline."""

import json
import os

import numpy as np
import pytest

from conftest import small_run_config, train_in_child

from data_pipelines.synthetic import geometry_from_config, write_dataset
from skyreels_jax.data import loader, records, split
from skyreels_jax.data.references import read_sources
from skyreels_jax.tasks.examples import make_codecs

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

FRACTION = 0.35


def eval_config(data_path: str, steps: int = 4):
  c = small_run_config(data_path)
  c.data.eval_fraction = FRACTION
  c.train.eval_every, c.train.eval_timesteps = 2, (0.3, 0.7)
  c.train.steps = steps
  return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("eval_data"))
  write_dataset(out, num_clips=48, seed=3, clips_per_source=2,
                **geometry_from_config(small_run_config().data))
  return out


def test_held_out_sources_are_never_trained_on(data):
  import grain
  shards = loader.find_shards(data)
  source = grain.sources.ArrayRecordDataSource(shards)
  sources = read_sources(shards, source)
  held = split.indices(sources, FRACTION, eval_side=True)
  kept = split.indices(sources, FRACTION, eval_side=False)
  assert 8 <= len(held) < len(sources) and len(held) + len(kept) == len(sources)
  # Whole videos on one side: both clips of a source video.
  held_videos = {split.source_key(sources[i], i) for i in held}
  assert not held_videos & {split.source_key(sources[i], i) for i in kept}
  # A clip by its pixels: the loader sends the uint8 frames as they are.
  fingerprint = lambda v: np.asarray(v, np.uint8).tobytes()
  held_pixels = {records.decode_clip(source[int(i)])["video"][:8].tobytes() for i in held}
  config = eval_config(data)
  _, tokenizer = make_codecs(config)
  it = loader.make_iterator(config.data, tokenizer=tokenizer, global_batch_size=8, seed=0)
  trained = {fingerprint(v) for _ in range(12) for v in next(it)["video"]}
  kept_pixels = {records.decode_clip(source[int(i)])["video"][:8].tobytes() for i in kept}
  assert trained == kept_pixels and not trained & held_pixels   # every kept clip, no held
  sets = loader.make_eval_datasets(config.data, tokenizer=tokenizer, global_batch_size=8,
                                   seed=0)
  evaluated = {fingerprint(v) for ds in sets.values() for b in ds for v in b["video"]}
  assert evaluated and evaluated <= held_pixels and len(evaluated) == len(held) // 8 * 8


def _eval_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if "eval_loss" in r}


def test_validation_is_the_same_on_one_device_a_mesh_and_after_a_resume(data, tmp_path):
  """One device in a child process: 2 steps, then a rerun to 4 (a resume); this process:
  4 steps uninterrupted on a (data 2, fsdp 2, tensor 2) mesh. The eval rows agree."""
  from skyreels_jax.train.trainer import train
  one = str(tmp_path / "one")
  train_in_child(__file__, "eval_config", (one, data, 2), (one, data, 4))
  config = eval_config(data)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  config.train.profile_steps = (2, 3)     # and a profile of steps 2..3
  config.train.sample_every = 4           # and samples of the final EMA weights
  config.train.sample_prompts = ("a red circle", "a blue square")
  config.train.sample_num_steps = 2
  config.train.wandb_project, config.train.wandb_mode = "skyreels-test", "offline"
  mesh = str(tmp_path / "mesh")
  train(config, mesh)
  # Weights & Biases, offline (no network): the run's file holds the train and eval series.
  [record] = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(mesh, "wandb"))
              for f in files if f.endswith(".wandb")]
  data = open(record, "rb").read()
  assert b"train/loss" in data and b"eval/eval_loss" in data and b"train/tokens_per_sec" in data
  traces = [f for _, _, files in os.walk(os.path.join(mesh, "profile")) for f in files
            if f.endswith(".xplane.pb")]
  assert len(traces) == 1
  a, b = _eval_rows(one), _eval_rows(mesh)
  assert sorted(a) == sorted(b) == [2, 4]
  for step in (2, 4):
    keys = [k for k in a[step] if k.startswith("eval_loss")]
    assert {"eval_loss", "eval_loss_video", "eval_loss_audio", "eval_loss_t2av",
            "eval_loss_t30", "eval_loss_video_i2v_t70"} <= set(keys)
    for k in keys:
      np.testing.assert_allclose(a[step][k], b[step][k], rtol=2e-5, err_msg=k)
  assert a[4]["eval_loss"] < a[2]["eval_loss"]      # it learns
  # The training rows carry the loss by timestep quartile too.
  with open(os.path.join(mesh, "metrics.jsonl")) as f:
    train_rows = [r for r in map(json.loads, f) if "loss" in r]
  assert all("loss_t0" in r for r in train_rows)

  # The samples are the sampler's output for the step's EMA weights (the WAV is 16-bit PCM:
  # 3e-5 apart at most; the raw params would differ by more).
  import soundfile as sf
  from skyreels_jax.sample.sampler import Sampler
  sampler = Sampler(mesh, step=4)
  want = sampler.generate(["a red circle", "a blue square"], seeds=[0, 1],
                          settings=sampler.settings(num_steps=2))
  folder = os.path.join(mesh, "samples", "4")
  assert sorted(os.listdir(folder)) == sorted(
      [f"sample_{i}.{e}" for i in range(2) for e in ("mp4", "wav", "json")]
      + ["contact_sheet.png"])
  for i in range(2):
    wave, _ = sf.read(os.path.join(folder, f"sample_{i}.wav"), dtype="float32",
                      always_2d=True)
    np.testing.assert_allclose(wave, np.clip(want["audio"][i], -1, 1), atol=4e-5)
    meta = json.load(open(os.path.join(folder, f"sample_{i}.json")))
    assert meta["seed"] == i and meta["checkpoint_step"] == 4 and meta["num_steps"] == 2
  assert os.listdir(os.path.join(mesh, "tensorboard"))
