"""Procedural audio-video clips: coloured shapes bounce around a dark room and beep at walls.

Every clip has exact ground truth, so models and the pipeline can be checked by numbers:
- 1 to 3 shapes (circle, square, triangle), one saturated primary colour each (red, green,
  blue, never repeated), so channel c of the video shows only the shape of colour c;
- each wall bounce starts an 80 ms tone at the bounce time whose pitch names the shape kind
  (circle 440 Hz, square 660 Hz, triangle 880 Hz); stereo clips pan it by horizontal position;
- `bounces` holds every bounce time in seconds; the caption says what is seen and heard;
- with --shots=N a clip holds N shots (hard cuts to other shapes, colours and pitches), each
  with its span and caption in the record's `shots`;
- with --edit_pairs a record is an edit: one shape recoloured or removed, its exact pixels
  as the mask, the scene before as source_video, the instruction, a still of the new shape.

  python -m data_pipelines.synthetic --out=/tmp/synth --num_clips=200 [--seed=0] \
      [--config=configs/tiny.py --config.data.height=64]
  python -m data_pipelines.synthetic --out=/tmp/edits --num_clips=200 --edit_pairs
  python -m data_pipelines.synthetic --out=/tmp/shots --num_clips=200 --shots=2
  python -m data_pipelines.synthetic --out=/tmp/synth --num_clips=64 --buckets \
      --config=configs/stages.py:2,tiny     # every bucket of a bucketed config
"""

import json
import os
import time
from typing import Any

import numpy as np

from skyreels_jax.data import records
from skyreels_jax.data import shots as shots_lib

KINDS = ("circle", "square", "triangle")
PITCH_HZ = {"circle": 440.0, "square": 660.0, "triangle": 880.0}
PITCH_WORD = {"circle": "low", "square": "middle", "triangle": "high"}
COLOURS = ("red", "green", "blue")  # index = RGB channel

TONE_SECONDS = 0.08
_ATTACK_SECONDS = 0.002
_RELEASE_SECONDS = 0.005
_DECAY_SECONDS = 0.02
_TONE_AMPLITUDE = 0.3
_SIZE_RANGE = (0.20, 0.35)   # shape side / diameter as a share of the shorter frame side
_SPEED_RANGE = (1.0, 2.0)    # frame sides travelled over the clip (at least one bounce, mostly)

GEOMETRY_KEYS = ("height", "width", "num_frames", "fps", "sample_rate", "channels")


def make_clip(rng: np.random.Generator, *, height: int, width: int, num_frames: int,
              fps: float, sample_rate: int, channels: int, edit: bool = False,
              shots: int = 1) -> dict[str, Any]:
  """One clip dict (see skyreels_jax.data.records) with `bounces`, drawn from `rng`.

  shots > 1: a multi-shot clip (`_multi_shot`): hard cuts between scenes with no colour and
  no shape kind in common, each shot with its caption in the record's `shots`.

  edit: an edit pair instead (its draws come after the clip's, so the source is the clip
  `edit=False` gives): `video` is the scene with one shape recoloured (to a colour no other
  shape has) or removed, `source_video` the scene before, `mask` 0 on the edited shape's
  pixels of every frame (exact), `instruction` ("make the red circle blue", "remove the
  green square"); a recolour also has `references`: a still of the new shape, centred."""
  if max(PITCH_HZ.values()) >= sample_rate / 2:
    raise ValueError(f"sample_rate {sample_rate} is too low for the {max(PITCH_HZ.values())} "
                     "Hz tones (Nyquist)")
  if channels not in (1, 2):
    raise ValueError(f"channels must be 1 or 2, got {channels}")
  geometry = dict(height=height, width=width, num_frames=num_frames, fps=fps,
                  sample_rate=sample_rate, channels=channels)
  duration = num_frames / fps
  side = min(height, width)

  if shots > 1:
    if edit:
      raise ValueError("a multi-shot clip (shots > 1) cannot be an edit pair")
    return _multi_shot(rng, shots, geometry)
  num_shapes = int(rng.integers(1, 4))
  colours = rng.permutation(3)[:num_shapes]
  shapes = [_draw_shape(rng, int(c), KINDS[int(rng.integers(len(KINDS)))], duration,
                        height=height, width=width) for c in colours]
  background = rng.integers(0, 21, size=3).astype(np.uint8)
  clip = _render(shapes, background, **geometry)
  if not edit:
    return clip
  target = int(rng.integers(num_shapes))
  s = shapes[target]
  free = [c for c in range(3) if c not in colours]
  edited = [dict(x) for x in shapes]
  name = f"{COLOURS[s['colour']]} {s['kind']}"
  if free and (num_shapes == 1 or rng.random() < 0.75):
    new_colour = int(free[int(rng.integers(len(free)))])
    edited[target]["colour"] = new_colour
    instruction = f"make the {name} {COLOURS[new_colour]}"
    still = np.empty((1, height, width, 3), np.uint8)
    still[:] = background
    ys, xs = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    still[0, :, :, new_colour][_mask(s["kind"], xs - width / 2, ys - height / 2,
                                     s["half"])] = 255
    references = still
  else:
    del edited[target]
    instruction, references = f"remove the {name}", None
  out = _render(edited, background, **geometry)
  keep = ~_shape_pixels(s, **geometry)
  return dict(out, source_video=clip["video"], mask=keep.astype(np.uint8),
              instruction=instruction, references=references)


def _draw_shape(rng: np.random.Generator, colour: int, kind: str, duration: float, *,
                height: int, width: int) -> dict[str, Any]:
  side = min(height, width)
  half = 0.5 * side * rng.uniform(*_SIZE_RANGE)
  centre = np.array([rng.uniform(half, width - half), rng.uniform(half, height - half)])
  angle = rng.uniform(0, 2 * np.pi)
  speed = rng.uniform(*_SPEED_RANGE) * side / duration
  velocity = speed * np.array([np.cos(angle), np.sin(angle)])
  return dict(kind=kind, colour=colour, half=half, centre=centre, velocity=velocity)


def shot_cuts(rng: np.random.Generator, num_frames: int, num_shots: int,
              window: int | None = None) -> list[int]:
  """Cut frames (sorted, exclusive of 0 and num_frames) of `num_shots` shots of about equal
  length, each moved by up to a fifth of a shot. `window`: every multiple of it is a cut too
  (the windows of one source each hold num_shots / (num_frames / window) whole shots)."""
  window = window or num_frames
  per_window = num_shots * window // num_frames
  cuts = []
  for w0 in range(0, num_frames, window):
    base = window / per_window
    for k in range(1, per_window):
      jitter = rng.uniform(-0.2, 0.2) * base
      cuts.append(w0 + int(np.clip(round(k * base + jitter), 1, window - 1)))
    if w0:
      cuts.append(w0)
  return sorted(set(cuts))


def _multi_shot(rng: np.random.Generator, num_shots: int, geometry: dict[str, Any],
                window: int | None = None) -> dict[str, Any]:
  """A clip of `num_shots` shots cut at `shot_cuts`; each shot a new scene (its own
  background; shapes of colours and kinds the shot before has none of: another pitch), its
  ground truth in `shots` ({start, end, text, sfx}) and the caption their "then"-join."""
  fps, num_frames = geometry["fps"], geometry["num_frames"]
  if num_frames < num_shots:
    raise ValueError(f"{num_shots} shots need at least as many frames, got {num_frames}")
  edges = [0] + shot_cuts(rng, num_frames, num_shots, window) + [num_frames]
  parts, shots, previous = [], [], dict(colours=(), kinds=())
  for f0, f1 in zip(edges, edges[1:]):
    colours = [c for c in range(3) if c not in previous["colours"]]
    kinds = [k for k in KINDS if k not in previous["kinds"]]
    n = int(rng.integers(1, min(2, len(colours), len(kinds)) + 1))
    colours = [int(c) for c in rng.permutation(colours)[:n]]
    kinds = [kinds[int(i)] for i in rng.permutation(len(kinds))[:n]]
    previous = dict(colours=colours, kinds=kinds)
    g = dict(geometry, num_frames=f1 - f0)
    shapes = [_draw_shape(rng, c, k, (f1 - f0) / fps, height=g["height"], width=g["width"])
              for c, k in zip(colours, kinds)]
    part = _render(shapes, rng.integers(0, 21, size=3).astype(np.uint8), **g)
    text, sfx = caption_fields(kinds, colours, any_bounce=bool(len(part["bounces"])))
    shots.append(dict(start=f0 / fps, end=f1 / fps, text=text, sfx=sfx))
    parts.append(part)
  bounces = np.concatenate([p["bounces"] + s["start"] for p, s in zip(parts, shots)])
  return dict(parts[0], video=np.concatenate([p["video"] for p in parts]),
              audio=np.concatenate([p["audio"] for p in parts]),
              bounces=bounces.astype(np.float32), shots=shots,
              caption=shots_lib.global_caption(shots))


def _render(shapes: list[dict], background: np.ndarray, *, height: int, width: int,
            num_frames: int, fps: float, sample_rate: int, channels: int) -> dict[str, Any]:
  """The clip of `shapes` moving over `background`: video, audio, bounces and caption."""
  duration = num_frames / fps
  video = np.empty((num_frames, height, width, 3), np.uint8)
  video[:] = background
  num_samples = int(round(duration * sample_rate))
  audio = np.zeros((num_samples, channels), np.float64)
  bounce_times = []
  for s in shapes:
    extent = np.array([width, height], np.float64)
    for axis in range(2):  # 0: x (left/right walls), 1: y (top/bottom walls)
      times = _bounce_times(s["centre"][axis], s["velocity"][axis], s["half"],
                            extent[axis], duration)
      for t in times:
        x_at_t = _fold(s["centre"][0], s["velocity"][0], s["half"], width, t)
        _add_tone(audio, t, PITCH_HZ[s["kind"]], pan=x_at_t / width, sample_rate=sample_rate)
      bounce_times.extend(times)
    video[..., s["colour"]][_shape_pixels(s, height=height, width=width,
                                          num_frames=num_frames, fps=fps)] = 255

  peak = np.max(np.abs(audio)) if audio.size else 0.0
  if peak > 1.0:  # overlapping tones: rescale rather than clip, so pitches stay clean.
    audio /= peak
  return dict(
      video=video,
      audio=audio.astype(np.float32),
      fps=float(fps),
      sample_rate=int(sample_rate),
      caption=caption_for([s["kind"] for s in shapes], [s["colour"] for s in shapes],
                          any_bounce=bool(bounce_times)),
      bounces=np.sort(np.asarray(bounce_times, np.float32)),
  )


def _shape_pixels(s: dict, *, height: int, width: int, num_frames: int, fps: float,
                  **unused) -> np.ndarray:
  """(T, H, W) bool: the pixels shape `s` covers on every frame."""
  del unused
  frame_times = np.arange(num_frames) / fps
  ys = np.arange(height)[:, None] + 0.5  # pixel centres
  xs = np.arange(width)[None, :] + 0.5
  cx = _fold(s["centre"][0], s["velocity"][0], s["half"], width, frame_times)
  cy = _fold(s["centre"][1], s["velocity"][1], s["half"], height, frame_times)
  return np.stack([_mask(s["kind"], xs - cx[f], ys - cy[f], s["half"])
                   for f in range(num_frames)])


def caption_for(kinds: list[str], colours: list[int], *, any_bounce: bool) -> str:
  """Deterministic structured caption, e.g. `<text>a red circle bounces ...</text><sfx>...`."""
  text, sfx = caption_fields(kinds, colours, any_bounce=any_bounce)
  return f"<text>{text}</text><sfx>{sfx}</sfx>"


def caption_fields(kinds: list[str], colours: list[int], *,
                   any_bounce: bool) -> tuple[str, str]:
  """(what is seen, what is heard) of a scene: `caption_for`'s two fields."""
  things = [f"a {COLOURS[c]} {k}" for k, c in zip(kinds, colours)]
  verb = "bounces" if len(things) == 1 else "bounce"
  text = f"{_join(things)} {verb} around a dark room"
  if not any_bounce:
    return text, "silence"
  beeps = [f"a {PITCH_WORD[k]} beep" for k in KINDS if k in kinds]  # low to high
  return text, f"{_join(beeps)} at every bounce"


def _join(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fold(p0, v, half, extent, t):
  """Centre position at time(s) t of a point moving at v, reflected inside [half, extent-half].

  Unfolding the reflections turns the motion into a straight line; folding that line back with
  period 2L (L = free travel range) gives the position, and crossings of k*L are the bounces.
  """
  span = extent - 2 * half
  m = np.mod(p0 - half + v * np.asarray(t, np.float64), 2 * span)
  return half + np.where(m <= span, m, 2 * span - m)


def _bounce_times(p0, v, half, extent, duration) -> list[float]:
  """Times in (0, duration) at which the unfolded position crosses a multiple of the span."""
  span = extent - 2 * half
  u0, u1 = p0 - half, p0 - half + v * duration
  lo, hi = sorted((u0, u1))
  ks = np.arange(np.floor(lo / span) + 1, np.ceil(hi / span))
  times = (ks * span - u0) / v if v else np.zeros(0)
  return [float(t) for t in times if 0 < t < duration]


def _mask(kind: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
  if kind == "circle":
    return dx * dx + dy * dy <= half * half
  if kind == "square":
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  # Upward triangle: apex at the top (image y grows downwards), base at the bottom.
  depth = (dy + half) / (2 * half)  # 0 at the apex row, 1 at the base row
  return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= half * depth)


def _add_tone(audio: np.ndarray, start: float, freq: float, *, pan: float,
              sample_rate: int) -> None:
  """Adds a decaying sine starting at `start` seconds (fast attack, exponential decay)."""
  first = int(np.ceil(start * sample_rate))
  n = min(int(TONE_SECONDS * sample_rate), audio.shape[0] - first)
  if n <= 0:
    return
  t = (first + np.arange(n)) / sample_rate - start
  envelope = np.minimum(t / _ATTACK_SECONDS, 1.0) * np.exp(-t / _DECAY_SECONDS)
  envelope *= np.clip((TONE_SECONDS - t) / _RELEASE_SECONDS, 0.0, 1.0)  # no click at the end
  tone = _TONE_AMPLITUDE * envelope * np.sin(2 * np.pi * freq * t)
  if audio.shape[1] == 1:
    audio[first:first + n, 0] += tone
  else:  # equal-power pan: left at x = 0, right at x = width.
    pan = float(np.clip(pan, 0.0, 1.0))
    audio[first:first + n, 0] += np.cos(0.5 * np.pi * pan) * tone
    audio[first:first + n, 1] += np.sin(0.5 * np.pi * pan) * tone


def write_dataset(out_dir: str, *, num_clips: int, seed: int, clips_per_shard: int = 64,
                  clips_per_source: int = 1, kind: str = "video", edit_pairs: bool = False,
                  shots: int = 1, **geometry) -> dict[str, Any]:
  """Writes `num_clips` clips as ArrayRecord shards plus index.json; returns the index.
  `kind`: video records, or each clip's first frame as an image record, or its sound alone
  as an audio record (the image and audio buckets of data/buckets.py). `edit_pairs`: each
  record an edit pair (make_clip's edit: mask, source_video, instruction, references).
  `shots` > 1: multi-shot video clips (`_multi_shot`), each window of a source holding
  `shots` whole shots, its record with `shots` and their joined caption.

  Clips come in sources of `clips_per_source` consecutive windows of one longer scene (the
  records' `source` is `synthetic/SEED/S@start_seconds`, as build_records writes for real
  videos; the in-context references of data/references.py pair windows of one source).
  Source s is drawn from `np.random.default_rng([seed, s])`, so a clip's content does not
  depend on num_clips or clips_per_shard (with one clip per source, clip i is source i).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from skyreels_jax.data import references  # pylint: disable=g-import-not-at-top

  missing = [k for k in GEOMETRY_KEYS if k not in geometry]
  unknown = sorted(set(geometry) - set(GEOMETRY_KEYS))
  if missing or unknown:
    raise ValueError(f"geometry needs exactly {GEOMETRY_KEYS}: missing {missing}, "
                     f"unknown {unknown}")
  if min(num_clips, clips_per_shard, clips_per_source, shots) <= 0:
    raise ValueError(f"num_clips ({num_clips}), clips_per_shard ({clips_per_shard}), "
                     f"clips_per_source ({clips_per_source}) and shots ({shots}) must be "
                     "positive")
  if shots > 1 and (edit_pairs or kind != "video"):
    raise ValueError("shots > 1 makes video clips; not with edit pairs, images or audio")
  os.makedirs(out_dir, exist_ok=True)
  num_shards = -(-num_clips // clips_per_shard)
  shards = []
  num_bounces = 0
  scene: dict[str, Any] = {}
  for shard in range(num_shards):
    name = f"synthetic-{shard:05d}-of-{num_shards:05d}.array_record"
    writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
    ids = range(shard * clips_per_shard, min(num_clips, (shard + 1) * clips_per_shard))
    sources = []
    for i in ids:
      src, window = divmod(i, clips_per_source)
      if scene.get("id") != src:
        long = dict(geometry, num_frames=geometry["num_frames"] * clips_per_source)
        rng = np.random.default_rng([seed, src])
        scene = dict(id=src, clip=_multi_shot(rng, shots * clips_per_source, long,
                                              window=geometry["num_frames"]) if shots > 1
                     else make_clip(rng, **long, edit=edit_pairs))
      clip = _window(scene["clip"], window, geometry["num_frames"])
      clip["source"] = f"synthetic/{seed}/{src}@{window * geometry['num_frames'] / geometry['fps']:.3f}"
      sources.append(clip["source"])
      num_bounces += len(clip["bounces"])
      writer.write(records.encode_clip(_as_kind(clip, kind)))
    writer.close()
    references.write_sidecar(os.path.join(out_dir, name), sources)
    shards.append(dict(path=name, num_records=len(ids)))
  index = dict(
      schema_version=records.SCHEMA_VERSION,
      num_clips=num_clips,
      seed=seed,
      clips_per_source=clips_per_source,
      edit_pairs=bool(edit_pairs),
      shots=int(shots),
      geometry=dict(geometry),
      num_bounces=num_bounces,
      shards=shards,
  )
  with open(os.path.join(out_dir, "index.json"), "w") as f:
    json.dump(index, f, indent=2)
  return index


def _as_kind(clip: dict[str, Any], kind: str) -> dict[str, Any]:
  if kind == "image":
    given = {k: clip[k][:1] for k in ("source_video", "mask") if clip.get(k) is not None}
    return dict(kind="image", video=clip["video"][:1], caption=clip["caption"],
                source=clip["source"], instruction=clip.get("instruction"),
                references=clip.get("references"), **given)
  if kind == "audio":
    return dict(kind="audio", audio=clip["audio"], sample_rate=clip["sample_rate"],
                caption=clip["caption"], source=clip["source"])
  return clip


def write_buckets(out_dir: str, data_config, *, num_clips: int, seed: int,
                  clips_per_source: int = 1,
                  edit_pairs: bool = False) -> dict[str, dict[str, Any]]:
  """`num_clips` records in every shape bucket of `data_config` (data/buckets.py), each in
  OUT/<bucket name>/ as the loader reads them; returns {bucket name: index}."""
  from skyreels_jax.data import buckets  # pylint: disable=g-import-not-at-top
  out = {}
  for b in buckets.all_buckets(data_config):
    geometry = geometry_from_config(data_config)
    geometry.update(num_frames=b.num_frames)
    if b.kind != "audio":
      geometry.update(height=b.height, width=b.width)
    out[b.name] = write_dataset(os.path.join(out_dir, b.name), num_clips=num_clips, seed=seed,
                                clips_per_source=clips_per_source, kind=b.kind,
                                edit_pairs=edit_pairs and b.kind != "audio", **geometry)
  return out


def _window(clip: dict[str, Any], w: int, num_frames: int) -> dict[str, Any]:
  """Window `w` of `num_frames` frames of a longer clip (its sound and bounces with it)."""
  fps, rate = clip["fps"], clip["sample_rate"]
  t0, t1 = w * num_frames / fps, (w + 1) * num_frames / fps
  a0, a1 = int(round(t0 * rate)), int(round(t1 * rate))
  bounces = clip["bounces"]
  frames = slice(w * num_frames, (w + 1) * num_frames)
  cut = {k: clip[k][frames] for k in ("source_video", "mask") if clip.get(k) is not None}
  out = dict(clip, video=clip["video"][frames], audio=clip["audio"][a0:a1], **cut,
             bounces=(bounces[(bounces >= t0) & (bounces < t1)] - t0).astype(np.float32))
  if clip.get("shots"):
    out["shots"] = shots_lib.clip_shots(clip["shots"], t0, t1)
    out["caption"] = shots_lib.global_caption(out["shots"])
  return out


def geometry_from_config(data_config) -> dict[str, Any]:
  """Clip geometry of `write_dataset` from a config's `data` section."""
  return dict(height=int(data_config.height), width=int(data_config.width),
              num_frames=int(data_config.num_frames), fps=float(data_config.fps),
              sample_rate=int(data_config.sample_rate),
              channels=int(data_config.audio_channels))


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  config = flags.FLAGS.config
  start = time.perf_counter()
  if flags.FLAGS.buckets:
    found = write_buckets(flags.FLAGS.out, config.data, num_clips=flags.FLAGS.num_clips,
                          seed=flags.FLAGS.seed, clips_per_source=flags.FLAGS.clips_per_source,
                          edit_pairs=flags.FLAGS.edit_pairs)
    print(f"wrote {flags.FLAGS.num_clips} records into each of {sorted(found)} under "
          f"{flags.FLAGS.out}, {time.perf_counter() - start:.1f} s")
    return
  index = write_dataset(flags.FLAGS.out, num_clips=flags.FLAGS.num_clips,
                        seed=flags.FLAGS.seed, clips_per_source=flags.FLAGS.clips_per_source,
                        edit_pairs=flags.FLAGS.edit_pairs, shots=flags.FLAGS.shots,
                        **geometry_from_config(config.data))
  g = index["geometry"]
  print(f"wrote {index['num_clips']} clips ({index['num_bounces']} bounces) in "
        f"{len(index['shards'])} shards to {flags.FLAGS.out}: {g['num_frames']}x{g['height']}x"
        f"{g['width']} @ {g['fps']} fps, {g['sample_rate']} Hz x{g['channels']}, "
        f"{time.perf_counter() - start:.1f} s")


def _define_flags():
  """Flags are defined only when run as a script, so importing this module registers none."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  default_config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs", "tiny.py")
  flags.DEFINE_string("out", None, "Output folder for the ArrayRecord shards.", required=True)
  flags.DEFINE_integer("num_clips", None, "Number of clips to write.", required=True)
  flags.DEFINE_integer("seed", 0, "Data set seed.")
  flags.DEFINE_integer("clips_per_source", 1, "Consecutive clips cut from one scene (pairs "
                       "for in-context references, data.refs).")
  flags.DEFINE_bool("edit_pairs", False, "Edit pairs: each record a shape recoloured or "
                    "removed, with mask, source_video, instruction (and a reference still).")
  flags.DEFINE_integer("shots", 1, "Shots per clip: > 1 writes multi-shot clips (hard cuts "
                       "between scenes), their records carrying `shots`.")
  flags.DEFINE_bool("buckets", False, "Write every shape bucket of the config (video, image "
                    "and audio records) into OUT/<bucket>/, as the loader reads them.")
  config_flags.DEFINE_config_file("config", default_config,
                                  "Config file; clip geometry comes from its `data` section.")


if __name__ == "__main__":
  from data_pipelines import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(_main)
