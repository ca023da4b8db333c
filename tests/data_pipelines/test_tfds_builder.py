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
  assert str(builder.info.version) == "1.0.0"
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
      assert clip["kind"] == entry["kind"]
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
