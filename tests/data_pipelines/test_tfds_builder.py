"""The tfds builder prepares a build_records folder; tfds.data_source reads it back, no TF."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from data_pipelines import build_records
from data_pipelines import tfds_builder
from skyreels_jax.data import records

from media_files import read_json, small_data_config, write_media

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  media = tmp_path_factory.mktemp("media")
  write_media(media)
  out = tmp_path_factory.mktemp("records")
  build_records.build(str(media), str(out), small_data_config())
  return out


def test_prepare_then_data_source_reads_every_record(records_dir, tmp_path):
  index = read_json(records_dir / "index.json")
  builder = tfds_builder.prepare(str(records_dir), str(tmp_path / "tfds"))
  assert str(builder.info.version) == "1.1.0"
  assert builder.info.metadata["geometry"] == index["geometry"]
  expected = {name: e["num_records"] for name, e in index["buckets"].items()}
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == expected

  originals = set()
  for name, entry in index["buckets"].items():
    source = tfds.data_source(tfds_builder.NAME, data_dir=str(tmp_path / "tfds"), split=name)
    assert len(source) == entry["num_records"]
    for i in range(len(source)):
      example = source[i]
      assert example["bucket"] == name.encode()
      clip = records.decode_clip(example["record"])
      assert clip["kind"] == entry["kind"] and example["given"] == b""
      originals.add(clip["source"])
  assert len(originals) == index["totals"]["num_records"] == 6

  every = "+".join(index["buckets"])
  assert len(tfds.data_source(tfds_builder.NAME, data_dir=str(tmp_path / "tfds"),
                              split=every)) == 6


def test_cli_prepares_and_a_fresh_process_reads_without_the_builder_class(records_dir,
                                                                           tmp_path):
  data_dir = tmp_path / "tfds"
  run = subprocess.run([sys.executable, "-m", "data_pipelines.tfds_builder",
                        f"--records={records_dir}", f"--data_dir={data_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "16x24x8 (2)" in run.stdout
  # Readers need no import of data_pipelines: tfds rebuilds the builder from its files.
  read = subprocess.run(
      [sys.executable, "-c",
       "import tensorflow_datasets as tfds; print(len(tfds.data_source('skyreels_clips', "
       f"data_dir={str(data_dir)!r}, split='audio_8000')))"],
      capture_output=True, text=True, timeout=120, check=False)
  assert read.returncode == 0, read.stderr[-2000:]
  assert read.stdout.split()[-1] == "2"


def test_prepare_needs_a_records_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="build_records folder"):
    tfds_builder.SkyreelsClips(records_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"))


def test_given_conditions_travel_in_the_record(tmp_path):
  """A mask and a reference sidecar reach the tfds examples: in the record, and named in
  `given`."""
  import numpy as np
  from PIL import Image
  from media_files import write_video
  src = tmp_path / "src"
  src.mkdir()
  write_video(src / "a.mp4", width=32, height=32, fps=8, seconds=1.0)
  mask = np.zeros((32, 32), np.uint8)
  mask[:, :16] = 255
  Image.fromarray(mask).save(src / "a.mask.png")
  Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(src / "a.ref.png")
  out = tmp_path / "records"
  build_records.build(str(src), str(out), small_data_config())
  tfds_builder.prepare(str(out), str(tmp_path / "tfds"))
  (example,) = list(tfds.data_source(tfds_builder.NAME, data_dir=str(tmp_path / "tfds"),
                                     split="16x16x8"))
  assert example["given"] == b"mask,references"
  clip = records.decode_clip(example["record"])
  np.testing.assert_array_equal(clip["mask"][0, :, :8], 0)
  np.testing.assert_array_equal(clip["mask"][0, :, 8:], 1)
  assert clip["references"].shape == (1, 16, 16, 3)
