"""Clip shards -> latent shards: runs the config's frozen encoders once, ahead of training.

  python -m data_pipelines.encode_latents --data=DATA --out=LAT --config=configs/tiny.py \
      [--batch_size=8] [--dtype=float32|bfloat16]

Reads every clip shard of DATA, flat (`DATA/*.array_record`, at the config geometry) or per
shape bucket (`DATA/<bucket name>/*.array_record`, at that bucket's geometry), preprocesses
each clip with the loader's `ClipPreprocessor`, encodes batches with the autoencoders (and a
frozen text encoder) jitted over all local devices, and writes `skyreels_jax.data.latents`
records to the same layout under LAT (`LAT/<bucket>/<same shard name>`), plus `LAT/index.json`:
counts, the encoders' identity, the config geometry and the latent shapes per bucket.

A shard is written under a temporary name and renamed when complete, then entered in
index.json, so a restarted run redoes only the shards it had not finished. Given
conditions travel along (data/latents.py schema 2): masks brought to the latent grids by
the rule of tasks/given.py, sources and reference stills encoded, edit prompts tokenized
(or embedded) by data.edit_prompt. A restart with
other encoders, geometry or dtype is refused: latents of two encoders must not mix. Bad
records (corrupt bytes, clips that do not fit their bucket) are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from skyreels_jax.data import buckets, latents, records
from skyreels_jax.data.loader import ClipPreprocessor

INDEX = "index.json"
FLAT = "."            # the folder name of a flat data set's shards in index.json
_MAX_REASONS = 5      # bad-record messages kept per shard (the count is exact)


@dataclasses.dataclass(frozen=True)
class ShardJob:
  folder: str               # FLAT or a bucket name
  name: str                 # the shard's file name, the same in DATA and LAT
  bucket: buckets.Bucket    # geometry the shard's clips are preprocessed to

  @property
  def path(self) -> str:
    """The shard's path relative to DATA (and LAT): its key in index.json."""
    return self.name if self.folder == FLAT else f"{self.folder}/{self.name}"


def find_clip_shards(data_dir: str, data_config) -> list[ShardJob]:
  """Every clip shard under `data_dir` with its geometry: flat shards take the config's
  single geometry, a bucket folder must be named after one of the config's buckets."""
  known = {b.name: b for b in buckets.all_buckets(data_config)}
  d = data_config
  samples = buckets.samples_for_frames(int(d.num_frames), float(d.fps), int(d.sample_rate),
                                       bool(d.endpoint_frame))
  flat = buckets.Bucket("video", int(d.height), int(d.width), int(d.num_frames), samples)
  jobs = [ShardJob(FLAT, os.path.basename(p), flat)
          for p in sorted(glob.glob(os.path.join(data_dir, "*.array_record")))]
  for folder in sorted(os.listdir(data_dir)):
    shards = sorted(glob.glob(os.path.join(data_dir, folder, "*.array_record")))
    if not shards:
      continue
    if folder not in known:
      raise ValueError(f"{os.path.join(data_dir, folder)} is not a shape bucket of this config "
                       f"(its buckets: {sorted(known)}); check data.resolutions/durations")
    jobs += [ShardJob(folder, os.path.basename(p), known[folder]) for p in shards]
  if not jobs:
    raise ValueError(f"{data_dir} holds no ArrayRecord shards, flat or in bucket folders")
  return jobs


class Encoders:
  """The run's frozen encoders, jitted over a batch sharded across the local devices."""

  def __init__(self, config, *, batch_size: int, dtype: str = "float32", text_spec=None):
    from skyreels_jax.models import encoders  # pylint: disable=g-import-not-at-top
    from skyreels_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from skyreels_jax.models.text import FrozenTextEncoder  # pylint: disable=g-import-not-at-top
    from skyreels_jax.tasks.examples import make_codecs  # pylint: disable=g-import-not-at-top
    from skyreels_jax.tasks.shots import shot_count  # pylint: disable=g-import-not-at-top
    from skyreels_jax.train.state import place_frozen  # pylint: disable=g-import-not-at-top
    if dtype not in latents.DTYPES:
      raise ValueError(f"dtype must be one of {sorted(latents.DTYPES)}, got {dtype!r}")
    self.config, self.batch_size, self.dtype = config, batch_size, dtype
    self.text_spec = text_spec or encoders.build_text(config.text, dtype=jnp.float32,
                                                      param_dtype=jnp.float32,
                                                      max_shots=shot_count(config))
    # A trained text encoder learns with the model, so only its tokens can be stored.
    self.text_frozen = not self.text_spec.trainable
    codecs, _ = make_codecs(config, text_encoder=text_spec is None)
    self.video_ae, self.audio_ae = codecs.video_ae, codecs.audio_ae
    self.tokenizer = self.text_spec.tokenizer
    self.identity = latents.encoder_identity(config, text_frozen=self.text_frozen)

    # One process encodes alone: the config's ICI layout over this host's devices, no DCN.
    mesh_config = dict(config.mesh.to_dict(), **{f"dcn_{a}": 1 for a in mesh_lib.MESH_AXES})
    self.mesh = mesh_lib.make_mesh(mesh_config, devices=jax.local_devices())
    axis_rules = mesh_lib.rules(config)
    ways = mesh_lib.data_parallel_size(self.mesh, axis_rules)
    if batch_size <= 0 or batch_size % ways:
      raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {ways} "
                       "ways the batch is split over the local devices")
    shard = lambda ndim: mesh_lib.batch_sharding(self.mesh, ndim, axis_rules)
    out_dtype = latents.DTYPES[dtype]
    text_encoder = codecs.text_encoder
    if self.text_frozen and text_encoder is None:
      # A given frozen spec's make_encoder returns the pretrained encoder (no training
      # could fix random weights).
      with nnx.use_eager_sharding(False):
        text_encoder = FrozenTextEncoder(self.text_spec.make_encoder(nnx.Rngs(int(config.seed))))
    codecs = dataclasses.replace(codecs, text_encoder=text_encoder)
    # The frozen weights ride as arguments (placed by their logical axes), so they are not
    # baked into the programs as constants.
    self._params, params_sharding = place_frozen(codecs, self.mesh, axis_rules)
    def jitted(fn, key, ndims):
      sharding = params_sharding.get(key)
      return jax.jit(lambda p, *x: fn(codecs.bind({key: p} if p is not None else {}), *x),
                     in_shardings=(sharding, *(shard(n) for n in ndims)))
    self._video = jitted(lambda c, x: c.video_ae.encode(x).astype(out_dtype), "video_ae", (5,))
    self._audio = jitted(lambda c, x: c.audio_ae.encode(x).astype(out_dtype), "audio_ae", (3,))
    self._text = None
    if self.text_frozen:
      def embed(c, ids, mask):
        emb, out_mask = c.text_encoder(ids, mask)
        return emb.astype(out_dtype), out_mask.astype(jnp.bool_)
      self._text = jitted(embed, "text_encoder", (2, 2))

  def embed_text(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frozen text encoder's (embeddings, mask) of token rows."""
    with jax.set_mesh(self.mesh):  # attention strategies find the mesh axes here
      return self._run(self._text, (ids, mask), self._params.get("text_encoder"))

  def latent_shapes(self, bucket: buckets.Bucket) -> dict[str, list[int] | None]:
    """The latent shapes the autoencoders declare for one example of `bucket`."""
    try:
      video = None if bucket.kind == "audio" else [
          self.video_ae.latent_frames(bucket.num_frames),
          *self.video_ae.latent_hw(bucket.height, bucket.width), self.video_ae.latent_channels]
      audio = None if bucket.kind == "image" else [
          self.audio_ae.latent_length(bucket.num_samples), self.audio_ae.latent_channels]
    except ValueError as e:
      raise ValueError(f"bucket {bucket.name}: {e}") from e
    return {"video_latent_shape": video, "audio_latent_shape": audio}

  def preprocessor(self, bucket: buckets.Bucket) -> ClipPreprocessor:
    return ClipPreprocessor.for_bucket(bucket, self.config.data, self.tokenizer, (0, 0))

  def _run(self, fn: Callable, inputs: tuple[np.ndarray, ...], *consts) -> Any:
    """`fn(*consts, *batch)` over the rows of `inputs` in batches of batch_size, the last one
    zero-padded; the padding rows are dropped from the (pytree of) outputs."""
    outs = []
    for start in range(0, inputs[0].shape[0], self.batch_size):
      batch = [x[start:start + self.batch_size] for x in inputs]
      n = batch[0].shape[0]
      batch = [np.concatenate([x, np.zeros((self.batch_size - n,) + x.shape[1:], x.dtype)])
               for x in batch]
      out = jax.device_get(fn(*consts, *batch))
      outs.append(jax.tree.map(lambda y, n=n: np.asarray(y)[:n], out))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs)

  def encode(self, clips: list[dict], examples: list[dict], shapes: dict) -> list[dict]:
    """Latent records of decoded `clips` and their preprocessed `examples`."""
    out = [dict(kind=c["kind"], caption=c["caption"], source=c["source"],
                encoders=self.identity, video_latent=None, audio_latent=None) for c in clips]
    for key, fn in (("video", self._video), ("audio", self._audio)):
      which = [i for i, ex in enumerate(examples) if ex.get(key) is not None]
      if not which:
        continue
      lat = self._run(fn, (np.stack([examples[i][key] for i in which]),),
                      self._params.get(f"{key}_ae"))
      if list(lat.shape[1:]) != shapes[f"{key}_latent_shape"]:
        raise RuntimeError(f"{key} encoder made latents of shape {lat.shape[1:]}, it declares "
                           f"{shapes[f'{key}_latent_shape']}")
      for i, z in zip(which, lat):
        out[i][f"{key}_latent"] = z
    self._text_fields(out, [c["caption"] for c in clips], "")
    self._given(clips, examples, out)
    return out

  def _text_fields(self, out: list[dict], prompts: list[str], prefix: str,
                   which: list[int] | None = None) -> None:
    """Token ids (a trained text encoder) or frozen embeddings of `prompts` into the
    records `which` (default: all) as PREFIX + text_ids / text_embedding / text_mask."""
    which = list(range(len(out))) if which is None else which
    if not which:
      return
    tokens = [self.tokenizer(p) for p in prompts]
    if not prefix:     # model.shot_attention: each token's shot and the shots' spans
      for i, tok in zip(which, tokens):
        out[i].update({k: tok[k] for k in latents.SHOT_FIELDS if k in tok})
    if self._text is None:
      for i, tok in zip(which, tokens):
        out[i][prefix + "text_ids"] = np.asarray(tok["text_ids"], np.int32)
        out[i][prefix + "text_mask"] = np.asarray(tok["text_mask"], np.bool_)
    else:
      ids = np.stack([np.asarray(t["text_ids"], np.int32) for t in tokens])
      mask = np.stack([np.asarray(t["text_mask"], np.bool_) for t in tokens])
      emb, emb_mask = self.embed_text(ids, mask)
      for i, e, m in zip(which, emb, emb_mask):
        out[i][prefix + "text_embedding"], out[i][prefix + "text_mask"] = e, m

  def _given(self, clips: list[dict], examples: list[dict], out: list[dict]) -> None:
    """The records' given conditions as latents (tasks/given.py's grid rule for masks)."""
    from skyreels_jax.tasks import given  # pylint: disable=g-import-not-at-top
    from skyreels_jax.tasks.refiner import still_frames  # pylint: disable=g-import-not-at-top
    tf = self.video_ae.temporal_factor
    for c, ex, rec in zip(clips, examples, out):
      z = rec["video_latent"]
      if c.get("mask") is not None and z is not None:
        frames = ex["video"].shape[0]
        keep = given.video_keep(c["mask"][:frames], z.shape[:3], tf)
        rec["given_keep"] = keep[..., 0].astype(np.uint8)
      if c.get("audio_mask") is not None and rec["audio_latent"] is not None:
        n = ex["audio"].shape[0]
        mask = np.ones((n,), np.uint8)
        mask[:min(n, len(c["audio_mask"]))] = c["audio_mask"][:n]
        rec["given_audio_keep"] = given.audio_keep(mask, rec["audio_latent"].shape[0])[
            ..., 0].astype(np.uint8)
      rec["instruction"] = c.get("instruction")
    params = self._params.get("video_ae")
    which = [i for i, c in enumerate(clips)
             if c.get("source_video") is not None and out[i]["video_latent"] is not None]
    if which:
      pixels = np.stack([clips[i]["source_video"][:examples[i]["video"].shape[0]]
                         .astype(np.float32) / 127.5 - 1.0 for i in which])
      for i, z in zip(which, self._run(self._video, (pixels,), params)):
        out[i]["source_latent"] = z
    for i, c in enumerate(clips):   # stills: one latent frame each (refiner.still_latents)
      if c.get("references") is not None and out[i]["video_latent"] is not None:
        stills = np.repeat(c["references"][:, None].astype(np.float32) / 127.5 - 1.0,
                           still_frames(self.video_ae), 1)
        out[i]["reference_latents"] = self._run(self._video, (stills,), params)[:, 0]
    edits = [i for i, c in enumerate(clips) if c.get("source_video") is not None]
    mode = self.config.data.edit_prompt
    prompts = [clips[i]["instruction"] if mode == "instruction" and clips[i].get("instruction")
               else f"{clips[i]['caption']} {clips[i].get('instruction') or ''}".strip()
               for i in edits]
    self._text_fields(out, prompts, "edit_", edits)


def preprocess(prep: ClipPreprocessor, clip: dict) -> dict[str, np.ndarray | None]:
  """The loader's pixels/waveform for `clip` (RecordError for what it cannot use), with the
  stand-ins the loader adds for a missing stream (silence, a black video) set to None: only
  what the clip has is encoded."""
  ex = prep.preprocess(clip)
  if not ex.get("has_video", True):
    ex["video"] = None
  if "audio" in ex and not ex.get("has_audio", True):
    ex["audio"] = None
  return ex


def encode_shard(job: ShardJob, data_dir: str, out_dir: str, enc: Encoders) -> dict[str, Any]:
  """Encodes one clip shard into `out_dir/job.path` (atomically); returns its counts."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  dst = os.path.join(out_dir, job.path)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = os.path.join(os.path.dirname(dst), f".{job.name}.partial")  # not *.array_record
  if os.path.exists(tmp):
    os.remove(tmp)  # left by an interrupted run
  shapes = enc.latent_shapes(job.bucket)
  prep = enc.preprocessor(job.bucket)
  reader = array_record_module.ArrayRecordReader(os.path.join(data_dir, job.path))
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  written, bad, reasons = 0, 0, []

  def skip(reason: str):
    nonlocal bad
    bad += 1
    if len(reasons) < _MAX_REASONS:
      reasons.append(reason)

  try:
    total = reader.num_records()
    for start in range(0, total, enc.batch_size):
      clips, examples = [], []
      for data in reader.read(list(range(start, min(total, start + enc.batch_size)))):
        try:
          clip = records.decode_clip(data)
          clip["caption"] = prep.caption(clip)   # the text embedded (data.shot_captions)
          examples.append(preprocess(prep, clip))
          clips.append(clip)
        except records.RecordError as e:
          skip(str(e))
      for rec in enc.encode(clips, examples, shapes) if clips else []:
        try:
          writer.write(latents.encode_latent_record(rec))
          written += 1
        except latents.LatentRecordError as e:  # e.g. an encoder's NaN on odd input
          skip(f"latents of {rec['source'] or rec['caption']!r}: {e}")
  finally:
    writer.close()
    reader.close()
  os.replace(tmp, dst)
  return dict(bucket=job.folder, num_records=written, bad_records=bad, bad_reasons=reasons)


def encode_dataset(data_dir: str, out_dir: str, config, *, batch_size: int = 8,
                   dtype: str = "float32", text_spec=None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """Encodes every clip shard of `data_dir` not yet finished in `out_dir`; returns index.json.

  text_spec: the text encoder (default: `encoders.build_text(config.text)`); when it is not
  trainable, records hold its embeddings instead of token ids.
  """
  jobs = find_clip_shards(data_dir, config.data)
  enc = Encoders(config, batch_size=batch_size, dtype=dtype, text_spec=text_spec)
  d = config.data
  empty = enc.tokenizer("")
  index = dict(
      latent_schema_version=latents.LATENT_SCHEMA_VERSION, complete=False, dtype=dtype,
      encoders=enc.identity,
      geometry=dict(height=int(d.height), width=int(d.width), num_frames=int(d.num_frames),
                    fps=float(d.fps), sample_rate=int(d.sample_rate),
                    audio_channels=int(d.audio_channels)),
      text=dict(length=int(np.asarray(empty["text_ids"]).shape[0]),
                embedding_width=int(enc.text_spec.width) if enc.text_frozen else None),
      edit_prompt=str(d.edit_prompt),
      buckets={}, shards={}, num_records=0, bad_records=0)
  index = json.loads(json.dumps(index))  # the JSON form, to compare with a saved index
  previous = _read_index(out_dir)
  if previous is not None:
    for key in ("latent_schema_version", "dtype", "encoders", "geometry", "text",
                "edit_prompt"):
      if previous.get(key) != index[key]:
        raise ValueError(f"{out_dir} holds latents with another {key} ({previous.get(key)} "
                         f"vs {index[key]}): encode into a new --out folder")
    paths = {job.path for job in jobs}
    index["shards"] = {p: s for p, s in previous.get("shards", {}).items()
                       if p in paths and os.path.exists(os.path.join(out_dir, p))}
  for job in jobs:
    index["buckets"].setdefault(job.folder, dict(
        name=job.bucket.name, kind=job.bucket.kind, height=job.bucket.height,
        width=job.bucket.width, num_frames=job.bucket.num_frames,
        num_samples=job.bucket.num_samples, **enc.latent_shapes(job.bucket)))
  if enc.text_frozen:     # the CFG null condition of training on these embeddings
    null = enc.embed_text(np.asarray(empty["text_ids"], np.int32)[None],
                          np.asarray(empty["text_mask"], bool)[None])
    os.makedirs(out_dir, exist_ok=True)
    latents.write_null_text(out_dir, null[0][0], null[1][0])
  done = 0
  bar = tqdm(total=len(jobs), initial=sum(j.path in index["shards"] for j in jobs),
             unit="shard", desc="encode_latents", disable=None)   # a terminal only
  for job in jobs:
    if job.path in index["shards"]:
      continue
    start = time.perf_counter()
    index["shards"][job.path] = stats = encode_shard(job, data_dir, out_dir, enc)
    done += 1
    _write_index(out_dir, index)
    bar.update(1)
    bar.set_postfix(records=index["num_records"], refresh=False)
    log(f"{job.path}: {stats['num_records']} records, {stats['bad_records']} bad, "
        f"{time.perf_counter() - start:.1f} s")
  bar.close()
  index["complete"] = True
  _write_index(out_dir, index)
  log(f"encoded {done} of {len(jobs)} shards ({len(jobs) - done} already done): "
      f"{index['num_records']} latent records, {index['bad_records']} bad, in {out_dir}")
  return index


def _read_index(out_dir: str) -> dict | None:
  path = os.path.join(out_dir, INDEX)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_index(out_dir: str, index: dict) -> None:
  """Totals from the shards, then an atomic replace (a crash leaves the previous index)."""
  for key in ("num_records", "bad_records"):
    index[key] = sum(s[key] for s in index["shards"].values())
    for folder, info in index["buckets"].items():
      info[key] = sum(s[key] for s in index["shards"].values() if s["bucket"] == folder)
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, f".{INDEX}.partial")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, INDEX))


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from skyreels_jax.parallel import multihost  # pylint: disable=g-import-not-at-top
  del argv
  multihost.quiet_absent_tpu()
  f = flags.FLAGS
  encode_dataset(f.data, f.out, f.config, batch_size=f.batch_size, dtype=f.dtype)


def _define_flags():
  """Flags are defined only when run as a script, so importing this module registers none."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("data", None, "Folder of clip shards (flat or per bucket).",
                      required=True)
  flags.DEFINE_string("out", None, "Output folder for the latent shards.", required=True)
  flags.DEFINE_integer("batch_size", 8, "Clips per encoder call, split over local devices.")
  flags.DEFINE_enum("dtype", "float32", sorted(latents.DTYPES), "Stored latent dtype.")
  config_flags.DEFINE_config_file("config", None, "Config whose encoders and geometry to use.")
  flags.mark_flag_as_required("config")


if __name__ == "__main__":
  from data_pipelines import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(_main)
