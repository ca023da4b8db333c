"""Shot cuts in ingestion: detection on the decoded frames (PySceneDetect's content detector)
and clip spans that respect them (at most `max_shots` shots per clip, no cut within
`margin` frames of a clip's edge).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from skyreels_jax.data import buckets as buckets_lib

# PySceneDetect's default for its content detector (mean HSV change between frames, 0-255).
THRESHOLD = 27.0


def detect_cuts(video: np.ndarray, fps: float, threshold: float = THRESHOLD) -> list[int]:
  """Frame indices where a new shot starts (never 0) in `video` (T, H, W, 3) uint8 RGB,
  as PySceneDetect's ContentDetector finds them on these frames (one shot may be one frame
  long: the detector's minimum scene length is 1)."""
  from scenedetect.common import FrameTimecode  # pylint: disable=g-import-not-at-top
  from scenedetect.detectors import ContentDetector  # pylint: disable=g-import-not-at-top
  detector = ContentDetector(threshold=threshold, min_scene_len=1)
  cuts = []
  for i, frame in enumerate(video):
    bgr = np.ascontiguousarray(frame[..., ::-1])    # OpenCV's channel order
    cuts += [int(t.frame_num) for t in detector.process_frame(FrameTimecode(i, fps=float(fps)), bgr)]
  return sorted({c for c in cuts if 0 < c < len(video)})


def plan_clips(num_frames: int, cuts: Sequence[int], lengths: Sequence[int], *,
               max_shots: int = 1, margin: int = 0) -> list[tuple[int, int]]:
  """(start, length) clip spans over `num_frames` frames (or samples), greedily from the
  start: the longest of `lengths` that holds at most `max_shots` shots (max_shots - 1 cuts inside) and
  has no cut closer than `margin` frames to either edge (a cut on an edge is fine). Where no
  length fits, the next clip starts at the next cut; frames before it are left out."""
  cuts = sorted(set(int(c) for c in cuts))
  spans, start = [], 0
  while True:
    fitting = [n for n in sorted(set(lengths), reverse=True) if start + n <= num_frames
               and _respects(start, start + n, cuts, max_shots, margin)]
    if fitting:
      spans.append((start, fitting[0]))
      start += fitting[0]
      continue
    later = [c for c in cuts if c > start]
    if not later or buckets_lib.longest_fitting(num_frames - later[0], lengths) is None:
      return spans
    start = later[0]


def _respects(start: int, end: int, cuts: list[int], max_shots: int, margin: int) -> bool:
  inside = [c for c in cuts if start < c < end]
  near_edge = any(c - start < margin or end - c < margin for c in inside)
  return len(inside) <= max_shots - 1 and not near_edge


def shot_spans(cuts: Sequence[int], start: int, length: int) -> list[tuple[int, int]]:
  """(first frame, end frame) of each shot of the clip [start, start + length), on the
  clip's own frames."""
  edges = [0] + [c - start for c in cuts if start < c < start + length] + [length]
  return list(zip(edges, edges[1:]))


def video_spans(video: np.ndarray, fps: float, captioned, geometry: dict):
  """(clip spans, detected cuts) of a decoded video for build_records' `geometry`: the
  detected cuts and the captioned shots' edges (a clip never straddles one more than
  max_shots_per_clip allows)."""
  found = (detect_cuts(video, fps, geometry["cut_threshold"])
           if geometry["cut_threshold"] > 0 else [])
  bounds = {int(round(t * fps)) for s in captioned or [] for t in (s["start"], s["end"])}
  spans = plan_clips(len(video), sorted(set(found) | bounds), geometry["durations_frames"],
                     max_shots=geometry["max_shots_per_clip"],
                     margin=int(np.ceil(geometry["shot_margin_seconds"] * fps)))
  return spans, found
