"""A tensorflow-datasets builder over a build_records output folder, to version data sets.

  python -m data_pipelines.tfds_builder --records=OUT --data_dir=TFDS_DIR

prepares `skyreels_clips` (VERSION below) in TFDS_DIR. Read it without TensorFlow:

  source = tfds.data_source("skyreels_clips", data_dir=TFDS_DIR, split="16x24x8")
  clip = records.decode_clip(source[0]["record"])

Splits: one per shape bucket, named like the bucket (`16x24x8`, `image_16x24`, `audio_8000`),
because a batch holds one bucket's shape and `tfds.data_source` opens one split at a time;
`split="16x24x8+image_16x24"` concatenates buckets when shapes do not matter. Examples are the
record bytes exactly as build_records wrote them (`record`, decoded by
skyreels_jax.data.records.decode_clip: masks, sources, references and instructions travel
inside it) plus the bucket name (`bucket`) and the given conditions present (`given`), so
the clip schema stays in one place. The geometry of the build (index.json's `geometry`) is in
`builder.info.metadata`. `as_dataset()` / `tfds.load` need TensorFlow: use the data source.
"""

import json
import os
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NAME = "skyreels_clips"


class SkyreelsClips(tfds.core.GeneratorBasedBuilder):
  """Examples are the records of one build_records folder, one split per bucket."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Records schema 2 (video / image / audio kinds), one split per shape bucket.",
      "1.1.0": "Records schema 3: given conditions (mask, audio_mask, source_video, "
               "references, instruction) inside `record`; `given` lists those present.",
  }
  # tfds finds a packaged builder's source file through the `importlib_resources` backport,
  # which is not installed (nor needed elsewhere): name the file directly.
  code_path = epath.Path(__file__)

  def __init__(self, *, records_dir: str | None = None, **kwargs):
    """`records_dir` (a build_records OUT folder) is needed to prepare, not to read."""
    self._records_dir = records_dir
    self._index = read_index(records_dir) if records_dir else None
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo built directly: dataset_info_from_configs needs package metadata that a
    # builder outside a registered package lacks.
    metadata = tfds.core.MetadataDict()
    if self._index is not None:
      metadata.update(schema_version=self._index["schema_version"],
                      geometry=self._index["geometry"])
    return tfds.core.DatasetInfo(
        builder=self,
        description="Audio-video, image and audio clips cut into shape buckets by "
                    "data_pipelines.build_records; one split per bucket.",
        features=tfds.features.FeaturesDict({
            "record": tfds.features.Tensor(shape=(), dtype=np.object_),
            "bucket": tfds.features.Text(),
            # The record's given conditions, comma-separated ("mask,source_video,..."):
            # select edit pairs or masked clips without decoding the pixels.
            "given": tfds.features.Text(),
        }),
        metadata=metadata,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the records are local.
    if self._index is None:
      raise ValueError("preparing skyreels_clips needs records_dir (a build_records folder)")
    return {bucket: self._generate_examples(bucket, entry)
            for bucket, entry in self._index["buckets"].items() if entry["num_records"]}

  def _generate_examples(self, bucket: str, entry: dict[str, Any]):
    import grain  # pylint: disable=g-import-not-at-top
    from skyreels_jax.data import records  # pylint: disable=g-import-not-at-top
    for shard in entry["shards"]:
      source = grain.sources.ArrayRecordDataSource([os.path.join(self._records_dir,
                                                                 shard["path"])])
      if len(source) != shard["num_records"]:
        raise ValueError(f"{shard['path']} holds {len(source)} records, index.json says "
                         f"{shard['num_records']}: rebuild {self._records_dir}")
      for i in range(len(source)):
        clip = records.decode_clip(source[i])   # a bad record stops the build: rebuild
        given = ",".join(k for k in records.GIVEN_FIELDS if clip.get(k) is not None)
        yield f"{shard['path']}:{i}", dict(record=source[i], bucket=bucket, given=given)


def read_index(records_dir: str) -> dict[str, Any]:
  path = os.path.join(records_dir, "index.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {records_dir!r} a build_records folder?")
  with open(path, encoding="utf-8") as f:
    index = json.load(f)
  if "buckets" not in index:
    raise ValueError(f"{path} has no `buckets`: not written by data_pipelines.build_records")
  return index


def prepare(records_dir: str, data_dir: str) -> SkyreelsClips:
  """Prepares the data set from `records_dir` into `data_dir`; returns the builder."""
  builder = SkyreelsClips(records_dir=records_dir, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  builder = prepare(flags.FLAGS.records, flags.FLAGS.data_dir)
  splits = builder.info.splits
  print(f"{NAME} {builder.info.version} in {builder.data_dir}: " + ", ".join(
      f"{name} ({splits[name].num_examples})" for name in sorted(splits.keys())))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("records", None, "A data_pipelines.build_records output folder.",
                      required=True)
  flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir to prepare into.",
                      required=True)


if __name__ == "__main__":
  from data_pipelines import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(_main)
