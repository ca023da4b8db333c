"""Sample-quality metrics: AV-Align on any clip, content scores on the procedural set.

  python -m skyreels_jax.sample.metrics --samples=OUT [--reference=RECORDS]
      [--max_reference=64] [--seed=0]

OUT is a sampler output folder (`sample_<i>.mp4`, H.264 + AAC, beside `sample_<i>.json` with
"prompt", "fps" and "size"); RECORDS a folder of ArrayRecord clips (`*.array_record`, flat or
in bucket subfolders), e.g. `python -m data_pipelines.synthetic --out=RECORDS`. Prints one JSON
line on stdout; a bad folder prints one line on stderr and exits 2.

Keys (each a mean over clips):
  num_samples, av_align           always; AV-Align of the samples (below), in [0, 1]
  num_reference, av_align_real,   with --reference: AV-Align of its first --max_reference
  av_align_shuffled               video clips with their own sound (the ceiling) and with the
                                  next clip's sound (the floor)
With a procedural reference (its index.json has "num_bounces"; captions are the prompts):
  adherence[_real|_random]        share of frames showing exactly the prompt's colour/shape
                                  set (content_scores), in [0, 1]; with shot tags (multi-
                                  shot prompts and clips), the set of the frame's shot
  colour_adherence[_real|_random] share of frames showing exactly the prompt's colours,
                                  whatever their shapes (a coarser model gets these first)
  cleanliness[_real|_random]      share of background pixels within BACKGROUND_TOLERANCE
                                  levels of the frame's background colour, in [0, 1]
  background_mad[_real|_random]   mean absolute deviation of the background from its colour,
                                  in 8-bit levels (lower is cleaner; cleanliness saturates)
  sync_score[_real|_shuffled]     sample/sync.py: audio onsets on visual bounces, in [0, 1]
`_real` scores the reference clips, `_random` uniform-noise frames of their shape prompted
with their captions, `_shuffled` video i with the sound of clip i + 1.

AV-Align (Yariv et al. 2023, "Diverse and Aligned Audio-to-Video Generation via Text-to-Video
Model Adaptation") as the paper's code computes it: audio peaks are librosa's onsets of the
mono track at librosa.load's 22.05 kHz; video peaks are strict local maxima of the mean
Farneback optical-flow magnitude between consecutive grey frames (the first pair counted twice,
pair (i-1, i) timed at i / fps); an onset and a peak match when less than 1 / fps apart, and
AV-Align = matches / (|onsets| + |peaks| - matches). Matches are one to one (the paper counts
every onset near any peak, which exceeds 1 when two onsets share a peak); no event on either
side scores 0, as sync_score does, so a still, silent sample is not perfect.

On the procedural set AV-Align is not a sync measure: a wall bounce reverses the motion, so its
frame pair moves least, and tones fall on flow minima, not maxima (16 frames at 8 fps: real
clips ~0.24, shuffled ~0.31). sync_score is the sync measure there; report both.
"""

import glob
import json
import os
import re
import sys

from absl import app, flags
from array_record.python import array_record_module
import av
import cv2
import librosa  # lazy_loader: ms to import; the first onset call loads scipy, numba (~3 s)
import numpy as np

from skyreels_jax.data import records
from skyreels_jax.data import shots as shots_lib
from skyreels_jax.sample import export, sync

# ---------------------------------------------------------------------------- AV-Align

ONSET_SAMPLE_RATE = 22050  # librosa.load's default, which the paper's audio peaks use


def audio_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """Seconds of librosa's onsets in (S,) or (S, C) audio (channel mean, at 22.05 kHz)."""
  audio = np.asarray(audio, np.float32)
  mono = audio.mean(axis=1) if audio.ndim == 2 else audio
  if mono.size == 0 or not sample_rate or not np.any(mono):
    return np.zeros((0,), np.float64)
  if sample_rate != ONSET_SAMPLE_RATE:
    mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=ONSET_SAMPLE_RATE)
  return np.asarray(librosa.onset.onset_detect(y=mono, sr=ONSET_SAMPLE_RATE, units="time"),
                    np.float64)


def flow_magnitudes(video: np.ndarray) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (T,): mean Farneback flow magnitude into each frame; frame 0
  repeats frame 1's value, as in the paper's code (so T values for T frames)."""
  grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in video]
  out = []
  for prev, cur in zip(grey[:-1], grey[1:]):
    # The paper's parameters: pyramid 0.5 x 3 levels, window 15, 3 iterations, poly 5 / 1.2.
    flow = cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    out.append(float(np.mean(np.hypot(flow[..., 0], flow[..., 1]))))
  return np.array(out[:1] + out, np.float64)


def video_peaks(video: np.ndarray, fps: float) -> np.ndarray:
  """Seconds of the strict local maxima of `flow_magnitudes` (index i at i / fps)."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[0] < 3:
    return np.zeros((0,), np.float64)
  m = flow_magnitudes(video)
  i = np.arange(1, len(m) - 1)
  return i[(m[i - 1] < m[i]) & (m[i] > m[i + 1])] / float(fps)


def count_matches(a: np.ndarray, b: np.ndarray, window: float) -> int:
  """Most one-to-one pairs (x in a, y in b) with |x - y| < window. On a line, pairing each x
  (in order) with the earliest unpaired y inside its window is optimal."""
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  j = matches = 0
  for x in a:
    while j < len(b) and b[j] <= x - window:
      j += 1
    if j < len(b) and b[j] < x + window:
      matches += 1
      j += 1
  return matches


def event_iou(onsets: np.ndarray, peaks: np.ndarray, fps: float) -> float:
  """AV-Align of given event times: matches / union, 0 when neither side has an event."""
  matches = count_matches(onsets, peaks, 1.0 / fps)
  union = len(onsets) + len(peaks) - matches
  return matches / union if union else 0.0


def av_align(video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> float:
  """AV-Align of a clip, real or generated: video uint8 (T, H, W, 3), audio (S,) or (S, C)."""
  return event_iou(audio_onsets(audio, sample_rate), video_peaks(video, fps), fps)


# ---------------------------------------------------------------- procedural content

# The procedural set's vocabulary (data_pipelines/synthetic.py, a floor above: not imported);
# colour index = RGB channel.
COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle")
_MENTION = re.compile(rf"\ba ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b", re.IGNORECASE)

BRIGHTNESS, DOMINANCE = 128.0, 1.5   # a shape pixel: its channel is bright and saturated
BACKGROUND_TOLERANCE = 10            # 8-bit levels off the background colour still "clean"
_MIN_BLOB_SHARE = 0.5    # the largest blob holds at least this share of its colour's pixels
_MIN_FILL = 0.45         # below: not a solid shape (noise, a stroke)
_SQUARE_FILL = 0.93      # fill of the bounding box: square 1, circle ~pi/4, triangle ~1/2
_TRIANGLE_TOP = 0.4      # an apex-up triangle has ~1/4 of its pixels in its top half


def prompt_objects(text: str) -> frozenset:
  """The (colour, shape) pairs a prompt names as "a <colour> <shape>"."""
  return frozenset((c.lower(), s.lower()) for c, s in _MENTION.findall(text or ""))


def colour_masks(video: np.ndarray) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (3, T, H, W) bool: channel c bright and DOMINANCE times the dimmest
  other channel. Unlike sync.py's masks (dominant over both), where two shapes overlap (255,
  255, dark: yellow) the pixel belongs to both, so neither shape loses its overlap."""
  v = np.asarray(video, np.float32)
  out = []
  for c in range(3):
    dimmest = np.minimum(*(v[..., o] for o in range(3) if o != c))
    out.append((v[..., c] > BRIGHTNESS) & (v[..., c] > DOMINANCE * dimmest))
  return np.stack(out)


def classify_blob(blob: np.ndarray) -> str | None:
  """A blob cropped to its bounding box (h, w) bool -> "circle", "square", "triangle" or None.

  A triangle is the one shape with most pixels in its lower half; of the symmetric ones the
  square fills its box (1) and the circle does not (pi/4; small rasterised circles up to ~0.92).
  """
  h, w = blob.shape
  fill = blob.sum() / float(h * w)
  if fill < _MIN_FILL:
    return None
  top, bottom = blob[:h // 2].sum(), blob[h - h // 2:].sum()
  if top < _TRIANGLE_TOP * (top + bottom):
    return "triangle"
  return "square" if fill >= _SQUARE_FILL else "circle"


def frame_objects(masks: np.ndarray) -> tuple[frozenset, np.ndarray]:
  """(3, H, W) colour masks of one frame -> ((colour, shape) set, (H, W) bool shape pixels).

  A colour is present when its largest 4-connected blob has at least 0.5% of the frame and
  half of the colour's pixels (scattered noise has neither); the blob's shape is then
  classified (None when it is no solid shape, which matches no prompt).
  """
  found, pixels = set(), np.zeros(masks.shape[1:], bool)
  min_area = max(4, 0.005 * masks.shape[1] * masks.shape[2])
  for c, mask in enumerate(masks):
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                           connectivity=4)
    if n < 2:
      continue
    j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[j]
    if area < min_area or area < _MIN_BLOB_SHARE * mask.sum():
      continue
    blob = labels == j
    found.add((COLOURS[c], classify_blob(blob[y:y + h, x:x + w])))
    pixels |= blob
  return frozenset(found), pixels


def wanted_objects(prompt: str, num_frames: int, fps: float | None) -> list[frozenset]:
  """What each frame should show: the prompt's objects, or with shot tags (data/shots.py)
  those of the shot the frame's time falls in (the global caption's outside every shot)."""
  try:
    base, shots = shots_lib.parse_tags(prompt or "")
  except shots_lib.ShotError:
    base, shots = prompt, []
  if not shots or not fps:
    return [prompt_objects(prompt)] * num_frames
  out = []
  for t in (np.arange(num_frames) + 0.5) / fps:
    shot = next((s for s in shots if s["start"] <= t < s["end"]), None)
    out.append(prompt_objects(shot["text"] if shot else base))
  return out


def content_scores(video: np.ndarray, prompt: str, fps: float | None = None) -> dict:
  """adherence, cleanliness and background_mad (module docstring) of a (T, H, W, 3) clip;
  a prompt with shots is checked shot by shot (`wanted_objects`, needs `fps`).

  Background: the pixels off the detected shapes, less a 1-pixel ring round them (codec and
  blur edges belong to the shape); its colour is the per-channel median in each frame.
  """
  video = np.asarray(video)
  want = wanted_objects(prompt, len(video), fps)
  masks = colour_masks(video)
  ring = np.ones((3, 3), np.uint8)
  hits, colour_hits, clean, mad = [], [], [], []
  colours = lambda objects: frozenset(c for c, _ in objects)
  for t, frame in enumerate(video):
    objects, pixels = frame_objects(masks[:, t])
    hits.append(objects == want[t])
    colour_hits.append(colours(objects) == colours(want[t]))
    off = ~cv2.dilate(pixels.astype(np.uint8), ring).astype(bool)
    if not off.any():
      continue
    bg = frame[off].astype(np.float32)   # (N, 3)
    dev = np.abs(bg - np.median(bg, axis=0))
    clean.append(float(np.mean(dev.max(axis=1) <= BACKGROUND_TOLERANCE)))
    mad.append(float(dev.mean()))
  return dict(adherence=float(np.mean(hits)), colour_adherence=float(np.mean(colour_hits)),
              cleanliness=float(np.mean(clean)) if clean else 0.0,
              background_mad=float(np.mean(mad)) if mad else 255.0)


def dominant_colour(frames: np.ndarray) -> int:
  """The RGB channel (= COLOURS index) with the most lit pixels (> 128) over `frames`
  (T, H, W, 3): on the procedural set (a dark room, each shape one saturated primary) the
  colour a run of frames mostly shows."""
  return int(np.argmax((np.asarray(frames) > 128).sum(axis=(0, 1, 2))))


def shot_order_scores(videos, asked) -> tuple[float, float]:
  """Two-shot samples against the colours their shots asked for, `asked` one (first,
  second) COLOURS index pair per video: (share of halves whose dominant colour is the asked
  one, share that would be right under the swapped order; a model that ignores the shot
  times scores the two alike)."""
  got = np.array([[dominant_colour(v[:len(v) // 2]), dominant_colour(v[len(v) // 2:])]
                  for v in videos])
  asked = np.asarray(asked)
  return float(np.mean(got == asked)), float(np.mean(got == asked[:, ::-1]))


# -------------------------------------------------------------------------- reading

class InputError(ValueError):
  """A folder the metrics cannot use; the CLI prints it as one line and exits 2."""


def _unscaled(video: np.ndarray, size) -> np.ndarray:
  """Undoes write_mp4's integer nearest-neighbour upscale (and even-size pad) when the JSON's
  "size" [h, w] divides the frames: block means, which also average out codec noise."""
  if not size:
    return video
  h, w = int(size[0]), int(size[1])
  f = video.shape[1] // h
  if f < 1 or video.shape[2] // w != f:
    return video
  crop = video[:, :h * f, :w * f].astype(np.float32)
  blocks = crop.reshape(video.shape[0], h, f, w, f, 3).mean(axis=(2, 4))
  return np.round(blocks).astype(np.uint8)


def read_samples(folder: str) -> list[dict]:
  """The sampler's MP4s in `folder`: dicts of video, audio, fps, sample_rate, prompt (None
  without a sample_<i>.json)."""
  if not os.path.isdir(folder):
    raise InputError(f"--samples={folder}: no such folder")
  paths = sorted(glob.glob(os.path.join(folder, "*.mp4")))
  if not paths:
    raise InputError(f"--samples={folder}: no .mp4 files (expected the sampler's "
                     "sample_<i>.mp4)")
  out = []
  for path in paths:
    meta_path = path[:-len(".mp4")] + ".json"
    meta = {}
    if os.path.isfile(meta_path):
      try:
        with open(meta_path) as f:
          meta = json.load(f)
      except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: not readable JSON ({e})") from None
    try:
      clip = export.read_mp4(path)
    except (av.error.FFmpegError, ValueError) as e:
      raise InputError(f"{path}: cannot decode ({e})") from None
    out.append(dict(video=_unscaled(clip["video"], meta.get("size")), audio=clip["audio"],
                    fps=float(meta.get("fps") or clip["fps"]),
                    sample_rate=int(clip["sample_rate"]), prompt=meta.get("prompt")))
  return out


def reference_shards(path: str) -> list[str]:
  """*.array_record in `path` and in its bucket subfolders."""
  if not os.path.isdir(path):
    raise InputError(f"--reference={path}: no such folder")
  shards = sorted(glob.glob(os.path.join(path, "*.array_record")) +
                  glob.glob(os.path.join(path, "*", "*.array_record")))
  if not shards:
    raise InputError(f"--reference={path}: no *.array_record shards (write some with "
                     "python -m data_pipelines.synthetic --out=DIR --num_clips=N)")
  return shards


def is_procedural(path: str) -> bool:
  """A data_pipelines.synthetic set: an index.json (top or bucket folder) with num_bounces."""
  for index in glob.glob(os.path.join(path, "index.json")) + glob.glob(
      os.path.join(path, "*", "index.json")):
    try:
      with open(index) as f:
        if "num_bounces" in json.load(f):
          return True
    except (OSError, ValueError):
      continue
  return False


def _shard_records(shard: str, limit: int) -> list[bytes]:
  """The first `limit` records of a shard, as bytes."""
  try:
    reader = array_record_module.ArrayRecordReader(shard)
    try:
      return reader.read(0, min(limit, reader.num_records()))
    finally:
      reader.close()
  except RuntimeError as e:  # what the C++ reader raises on a file that is no shard
    raise InputError(f"{shard}: not an ArrayRecord shard ({e})") from None


def read_reference(path: str, limit: int) -> list[dict]:
  """Up to `limit` video clips (with or without sound) of the records under `path`."""
  clips = []
  for shard in reference_shards(path):
    if len(clips) >= limit:
      break
    for i, data in enumerate(_shard_records(shard, limit - len(clips))):
      try:
        clip = records.decode_clip(data)
      except records.RecordError as e:
        raise InputError(f"{shard} record {i}: {e}") from None
      if clip["kind"] == "video" and clip["video"] is not None and len(clip["video"]) >= 3:
        clips.append(clip)
  if not clips:
    raise InputError(f"--reference={path}: no video clips among its records")
  return clips


# --------------------------------------------------------------------------- report

def _mean(values) -> float:
  return float(np.mean(values)) if len(values) else 0.0


def _sync(video, audio, fps, sample_rate) -> float:
  if audio is None or not sample_rate or np.size(audio) == 0:
    return 0.0
  return sync.sync_score(video, audio, fps, sample_rate)


def _events(clip: dict) -> tuple[np.ndarray, np.ndarray]:
  audio = clip["audio"] if clip["audio"] is not None else np.zeros((0,), np.float32)
  return audio_onsets(audio, clip["sample_rate"]), video_peaks(clip["video"], clip["fps"])


def _content(pairs) -> dict:
  """Mean content_scores of (video, prompt, fps) triples."""
  rows = [content_scores(v, p, fps) for v, p, fps in pairs]
  return {k: _mean([r[k] for r in rows]) for k in ("adherence", "colour_adherence",
                                                  "cleanliness", "background_mad")}


def report(samples: list[dict], reference: list[dict] | None = None,
           procedural: bool = False, seed: int = 0) -> dict:
  """The metrics of the module docstring for samples (read_samples) against reference clips
  (read_reference; records.decode_clip dicts)."""
  out = dict(num_samples=len(samples),
             av_align=_mean([av_align(s["video"], s["fps"], s["audio"], s["sample_rate"])
                             for s in samples]))
  if not reference:
    return out
  events = [_events(c) for c in reference]
  n = len(reference)
  partner = [(i + 1) % n for i in range(n)] if n > 1 else []  # the shuffled pairs' sound
  out.update(num_reference=n,
             av_align_real=_mean([event_iou(a, v, c["fps"])
                                  for (a, v), c in zip(events, reference)]),
             av_align_shuffled=_mean([event_iou(events[j][0], events[i][1], reference[i]["fps"])
                                      for i, j in enumerate(partner)]))
  if not procedural:
    return out
  prompted = [(s["video"], s["prompt"], s["fps"]) for s in samples if s["prompt"] is not None]
  if not prompted:
    raise InputError("no sample has a prompt (sample_<i>.json): the content scores need them")
  rng = np.random.default_rng(seed)
  caption = lambda c: shots_lib.tagged_caption(c["caption"], c.get("shots"))  # shot by shot
  noise = [(rng.integers(0, 256, c["video"].shape, dtype=np.uint8), caption(c), c["fps"])
           for c in reference]
  real = [(c["video"], caption(c), c["fps"]) for c in reference]
  for suffix, pairs in (("", prompted), ("_real", real), ("_random", noise)):
    out.update({k + suffix: v for k, v in _content(pairs).items()})
  out["sync_score"] = _mean([_sync(s["video"], s["audio"], s["fps"], s["sample_rate"])
                             for s in samples])
  out["sync_score_real"] = _mean([_sync(c["video"], c["audio"], c["fps"], c["sample_rate"])
                                  for c in reference])
  out["sync_score_shuffled"] = _mean([
      _sync(reference[i]["video"], reference[j]["audio"], reference[i]["fps"],
            reference[j]["sample_rate"]) for i, j in enumerate(partner)])
  return out


def _define_flags():
  """Flags are defined only when run as a script, so importing this module registers none."""
  flags.DEFINE_string("samples", None, "Sampler output folder (sample_<i>.mp4 + .json).")
  flags.DEFINE_string("reference", None, "ArrayRecord clips: AV-Align ceiling and floor; "
                      "content and sync scores when it is the procedural set.")
  flags.DEFINE_integer("max_reference", 64, "Reference clips read (in shard order).")
  flags.DEFINE_integer("seed", 0, "Seed of the random-frame floor.")


def _parse_flags(argv):
  """absl's parser, with a bad flag reported like the other usage errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _main(argv):
  f = flags.FLAGS
  try:
    if len(argv) > 1:
      raise InputError(f"unexpected arguments {argv[1:]}")
    if not f.samples:
      raise InputError("give --samples=DIR (a sampler output folder)")
    if f.max_reference < 1:
      raise InputError(f"--max_reference={f.max_reference}: must be positive")
    samples = read_samples(f.samples)
    reference = read_reference(f.reference, f.max_reference) if f.reference else None
    procedural = bool(f.reference) and is_procedural(f.reference)
    result = report(samples, reference, procedural, f.seed)
  except InputError as e:
    # One line and exit 2, as app.UsageError would, without the docstring and flag list.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result))


if __name__ == "__main__":
  _define_flags()
  app.run(_main, flags_parser=_parse_flags)
