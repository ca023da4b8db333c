"""Audio-video sync score for the synthetic bouncing-shapes data set.

In that data set each shape has its own saturated colour (pure red, green or blue on a dark
background) and every wall bounce starts a short tone. So a clip is in sync when the audio
onsets fall on the visual bounces:

  visual_bounce_times: per colour, the shape's centroid track; a bounce is a turn (sign flip
    of the velocity in x or y).
  audio_onset_times: an RMS envelope in ~5 ms hops crossing an adaptive threshold upwards.
  sync_score: the share of audio onsets within one video frame (+ the tone attack) of a bounce.

Real clips give the ceiling, video of clip i with audio of clip j the floor. The floor is not
zero: with B bounces in a clip of D seconds a random onset lands near one with probability
about B * 2 * tolerance / D, so compare a model against both numbers, not against 0 and 1.
"""

import numpy as np


def _channel_masks(video: np.ndarray, brightness: float, dominance: float) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (3, T, H, W) bool: pixels where channel c is bright and dominant."""
  v = video.astype(np.float32)
  masks = []
  for c in range(3):
    others = [v[..., o] for o in range(3) if o != c]
    ch = v[..., c]
    masks.append((ch > brightness) & (ch > dominance * others[0]) & (ch > dominance * others[1]))
  return np.stack(masks)


def _centroids(mask: np.ndarray, min_pixels: int, min_visible: float,
               max_gap: int) -> np.ndarray:
  """(T, H, W) bool -> (T, 2) float (y, x) centroids; NaN where the shape is not seen.

  A frame showing fewer than `min_visible` times the shape's median pixel count is dropped as
  well: the shape is partly hidden (another shape on top, a blurry generated frame) and its
  centroid would jump, faking a turn. Gaps of up to `max_gap` frames are filled linearly;
  longer ones stay NaN and split the track.
  """
  count = mask.sum(axis=(1, 2)).astype(np.float64)
  ys = np.arange(mask.shape[1], dtype=np.float64)
  xs = np.arange(mask.shape[2], dtype=np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    cy = (mask.sum(axis=2) * ys).sum(axis=1) / count
    cx = (mask.sum(axis=1) * xs).sum(axis=1) / count
  out = np.stack([cy, cx], axis=1)
  seen = count >= min_pixels
  if seen.any():
    seen &= count >= min_visible * np.median(count[seen])
  out[~seen] = np.nan
  idx = np.flatnonzero(seen)
  for a, b in zip(idx[:-1], idx[1:]):
    if 1 < b - a <= max_gap + 1:
      w = (np.arange(a + 1, b) - a)[:, None] / (b - a)
      out[a + 1:b] = (1 - w) * out[a] + w * out[b]
  return out


def _refine_turn(pos: np.ndarray, e: int, sign_before: int) -> float:
  """Sub-frame time of a turn at extreme frame e, assuming the bounce keeps the speed.

  Lines through pos[e-1] and pos[e+1] with slopes +-speed meet at
  e + sign_before * (pos[e+1] - pos[e-1]) / (2 * speed). The speed comes from the segments
  clear of the bounce (e-2 -> e-1, e+1 -> e+2) when present, else from the two around e.
  """
  outer = [abs(pos[i + 1] - pos[i]) for i in (e - 2, e + 1) if 0 <= i and i + 1 < len(pos)]
  outer = [s for s in outer if np.isfinite(s)]
  speed = max(outer) if outer else max(abs(pos[e] - pos[e - 1]), abs(pos[e + 1] - pos[e]))
  if not speed > 0:
    return float(e)
  offset = sign_before * (pos[e + 1] - pos[e - 1]) / (2.0 * speed)
  return float(e + np.clip(offset, -0.5, 0.5))


def _direction_runs(vel: np.ndarray, min_speed: float) -> list:
  """Runs [sign, first, last] of consecutive significant velocities of one sign.

  Velocities slower than `min_speed` (jitter, a frame resting on the wall) are skipped; NaN
  (shape not seen) ends the track, so runs on either side of it never form a turn (None
  marks the break). A single velocity against the motion on both sides (+ - +) is a centroid
  blip, not two bounces: it is merged away.
  """
  runs = []
  for t, v in enumerate(vel):
    if np.isnan(v):
      if runs and runs[-1] is not None:
        runs.append(None)
      continue
    if abs(v) < min_speed or v == 0:
      continue
    sign = 1 if v > 0 else -1
    if runs and runs[-1] is not None and runs[-1][0] == sign:
      runs[-1][2] = t
    else:
      runs.append([sign, t, t])
  merged = []
  for run in runs:
    if (run is not None and len(merged) >= 2 and merged[-1] is not None
        and merged[-2] is not None and merged[-1][1] == merged[-1][2]
        and merged[-2][0] == run[0]):
      merged.pop()  # the blip
      merged[-1][2] = run[2]
    elif run is not None and merged and merged[-1] is not None and merged[-1][0] == run[0]:
      merged[-1][2] = run[2]
    else:
      merged.append(run)
  return merged


def _turn_frames(pos: np.ndarray, min_speed: float) -> list:
  """Frames (possibly fractional) where a 1-D track reverses direction.

  velocity[t] = pos[t + 1] - pos[t]. A turn sits between two runs of opposite direction, at
  the frame between them (the middle of a slow stretch, if any); that frame is the extreme
  position, within half a frame of the contact when the bounce keeps the speed, and
  `_refine_turn` places it closer.
  """
  vel = np.diff(pos)
  speeds = np.abs(vel[np.isfinite(vel)])
  typical = float(np.median(speeds)) if speeds.size else 0.0
  if typical < min_speed:  # the shape does not move along this axis: jitter only
    return []
  # Against noise, a velocity counts from a quarter of the usual speed on this axis.
  runs = _direction_runs(vel, max(min_speed, 0.25 * typical))
  turns = []
  for before, after in zip(runs[:-1], runs[1:]):
    if before is None or after is None:
      continue
    last, first = before[2], after[1]  # the extreme lies in frames last+1 .. first
    if first == last + 1:
      turns.append(_refine_turn(pos, first, before[0]))
    else:
      turns.append(0.5 * (last + 1 + first))
  return turns


def visual_bounce_times(video: np.ndarray, fps: float, *, brightness: float = 128.0,
                        dominance: float = 1.5, min_pixels: int = 3,
                        min_visible: float = 0.7, max_gap: int = 2,
                        min_speed: float = 0.25) -> np.ndarray:
  """Seconds of the wall bounces seen in a (T, H, W, 3) uint8 clip, sorted.

  Per colour channel: foreground pixels are those where the channel exceeds `brightness` and
  `dominance` times both other channels; a frame with fewer than `min_pixels` of them, or
  under `min_visible` times the usual count (partly hidden), is not used, and gaps of up to
  `max_gap` frames are bridged. A bounce is a reversal of the centroid's x or y motion
  (`min_speed` in px/frame ignores jitter), timed to a fraction of a frame. A corner bounce
  (x and y at once) counts once. Blank, noisy or too short clips give [] without error.
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[0] < 3:
    return np.zeros((0,), np.float64)
  times = []
  for mask in _channel_masks(video, brightness, dominance):
    track = _centroids(mask, min_pixels, min_visible, max_gap)
    frames = sorted(_turn_frames(track[:, 0], min_speed) + _turn_frames(track[:, 1], min_speed))
    kept = []
    for f in frames:  # one corner bounce turns x and y within a frame: count it once
      if not kept or f - kept[-1] > 1.0:
        kept.append(f)
    times.extend(kept)
  return np.sort(np.array(times, np.float64)) / float(fps)


def rms_envelope(audio: np.ndarray, sample_rate: int, hop_s: float = 0.005) -> tuple:
  """(S,) or (S, C) float -> (RMS per hop of the channel mean, hop length in samples)."""
  audio = np.asarray(audio, dtype=np.float64)
  mono = audio.mean(axis=1) if audio.ndim == 2 else audio
  hop = max(1, round(hop_s * sample_rate))
  n = mono.shape[0] // hop
  if n == 0:
    return np.zeros((0,), np.float64), hop
  frames = mono[:n * hop].reshape(n, hop)
  return np.sqrt(np.mean(frames ** 2, axis=1)), hop


def audio_onset_times(audio: np.ndarray, sample_rate: int, *, hop_s: float = 0.005,
                      relative: float = 0.2, noise_factor: float = 4.0, floor: float = 1e-3,
                      refractory_s: float = 0.05) -> np.ndarray:
  """Seconds where a tone starts: the RMS envelope rises above a threshold after being below.

  threshold = max(relative * max envelope, noise_factor * 10th-percentile envelope, floor):
  relative to the loudest tone, above the clip's noise bed, and never on digital silence. After
  an onset, `refractory_s` must pass before the next. The onset is moved back over the hops
  where the envelope was still rising out of the noise (the partial first hop of a tone), so it
  is within about one hop of the true start.
  """
  env, hop = rms_envelope(audio, sample_rate, hop_s)
  if env.size == 0:
    return np.zeros((0,), np.float64)
  noise = float(np.percentile(env, 10))
  threshold = max(relative * float(env.max()), noise_factor * noise, floor)
  rest = max(2.0 * noise, 0.1 * threshold)  # level counted as "before the tone"
  refractory = max(1, round(refractory_s * sample_rate / hop))
  onsets, below, last = [], True, -refractory
  for k, e in enumerate(env):
    if e < threshold:
      below = True
      continue
    if below and k - last >= refractory:
      start = k
      while start > 0 and k - start < 3 and rest < env[start - 1] < env[start]:
        start -= 1
      onsets.append(start)
      last = k
    below = False
  return np.array(onsets, np.float64) * hop / float(sample_rate)


def match_onsets(onsets: np.ndarray, bounces: np.ndarray, tolerance: float) -> np.ndarray:
  """Bool per onset: is a bounce within `tolerance` seconds of it."""
  onsets, bounces = np.asarray(onsets, np.float64), np.asarray(bounces, np.float64)
  if bounces.size == 0:
    return np.zeros(onsets.shape, bool)
  return np.abs(onsets[:, None] - bounces[None, :]).min(axis=1) <= tolerance


def observable_onsets(onsets: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
  """Onsets a video of `num_frames` frames can show a bounce for.

  A turn is seen between a whole frame step before the contact and one after it, so a bounce
  less than one frame after the first frame, or two frames before the end (the last frame is
  at (T - 1) / fps), cannot be told; onsets there are dropped rather than counted as misses
  (real clips: ~0.85 -> ~0.98 at 16 frames).
  """
  onsets = np.asarray(onsets, np.float64)
  return onsets[(onsets >= 1.0 / fps) & (onsets <= (num_frames - 2.0) / fps)]


def sync_score(video: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int, *,
               attack_s: float = 0.02, tolerance: float | None = None) -> float:
  """Share of audio onsets within `1/fps + attack_s` seconds of a visual bounce, in [0, 1].

  Only onsets the video could show are scored (`observable_onsets`). Audio with no (scorable)
  onset scores 0.0: a silent or constant track shows no sync, and this keeps a model that
  emits no tones from scoring as perfect. `tolerance` (seconds) overrides the window: bounce
  times are refined to a few ms on clean clips, so half a frame also works when the data set
  places tones at the exact contact time (it lowers the random-pair floor by a third or more),
  but not when tones are snapped to the next frame.
  """
  video = np.asarray(video)
  onsets = observable_onsets(audio_onset_times(audio, sample_rate), video.shape[0], fps)
  if onsets.size == 0:
    return 0.0
  bounces = visual_bounce_times(video, fps)
  tol = (1.0 / fps + attack_s) if tolerance is None else tolerance
  return float(match_onsets(onsets, bounces, tol).mean())


def sync_report(pairs, fps: float, sample_rate: int, **kwargs) -> dict:
  """Scores several (video, audio) pairs: dict(mean, std, n, scores)."""
  scores = [sync_score(v, a, fps, sample_rate, **kwargs) for v, a in pairs]
  arr = np.array(scores, np.float64)
  return dict(mean=float(arr.mean()) if arr.size else 0.0,
              std=float(arr.std()) if arr.size else 0.0, n=len(scores), scores=scores)
