"""End to end: real media files -> build_records -> training (clips), and -> encode_latents ->
training (latents). Every bucket kind reaches the train step: landscape video with sound,
a silent vertical video, an image (T2I) and sound alone (T2A)."""

import json
import os

import numpy as np
import pytest

from conftest import small_run_config
from data_pipelines import build_records, encode_latents
from media_files import write_media
from skyreels_jax.train.trainer import train

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first


def _config(path, steps=4, **data):
  c = small_run_config(str(path))
  c.data.resolutions = ((16, 16), (16, 24), (24, 16))
  c.data.durations = (1.0,)
  c.data.tasks = dict(t2av=1.0, i2v=1.0, inpaint_stroke=1.0, t2v=1.0, t2a=1.0)
  c.train.steps = c.optim.decay_steps = c.train.checkpoint_every = steps
  for key, value in data.items():
    c.data[key] = value
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  src = tmp_path_factory.mktemp("media")
  write_media(src)
  out = tmp_path_factory.mktemp("records")
  index = build_records.build(str(src), str(out), _config(out).data)
  return out, index


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_trains_on_built_records(built, tmp_path):
  out, index = built
  assert set(index["buckets"]) == {"16x24x8", "24x16x8", "image_16x24", "audio_8000"}
  config = _config(out)
  # One batch of each bucket in the first four steps (equal weights, deterministic mix).
  config.data.bucket_weights = {name: 1.0 for name in index["buckets"]}
  train(config, str(tmp_path / "run"))
  rows = _metrics(tmp_path / "run")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert rows[-1]["bad_records"] == 0
  # Image and sound-only batches train one stream: their other loss is exactly zero.
  assert any(r["loss_audio"] == 0.0 and r["loss_video"] > 0 for r in rows)   # image batch
  assert any(r["loss_video"] == 0.0 and r["loss_audio"] > 0 for r in rows)   # sound alone


def test_trains_on_encoded_latents(built, tmp_path):
  out, _ = built
  config = _config(out)
  lat = tmp_path / "latents"
  index = encode_latents.encode_dataset(str(out), str(lat), config, batch_size=8,
                                        log=lambda s: None)
  assert index["complete"] and index["bad_records"] == 0
  assert index["num_records"] == sum(b["num_records"] for b in
                                     json.load(open(out / "index.json"))["buckets"].values())
  # Two buckets alternate: two steps. References are cut from pixel clips: none here.
  no_refs = dict(refs=dict(none=1.0), audio_ref_rate=0.0)
  config = _config(lat, 2, format="latents", **no_refs)
  config.data.bucket_weights = {"16x24x8": 1.0, "audio_8000": 1.0, "24x16x8": 0.0,
                                "image_16x24": 0.0}
  train(config, str(tmp_path / "run"))
  rows = _metrics(tmp_path / "run")
  assert [r["step"] for r in rows] == [1, 2] and rows[-1]["bad_records"] == 0
  assert any(r["loss_video"] == 0.0 and r["loss_audio"] > 0 for r in rows)   # sound alone
  assert any(r["loss_video"] > 0 for r in rows)
  # Latents made by other encoders are refused before training.
  other = _config(lat, format="latents", **no_refs)
  other.video_ae.spatial_factor = 2
  with pytest.raises(ValueError, match="spatial_factor"):
    train(other, str(tmp_path / "other"))
