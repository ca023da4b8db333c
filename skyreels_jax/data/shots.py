"""Multi-shot clips: shots with their own captions and time spans, on the clip's timeline.

A shot is `{"start": s, "end": e, "text": str}` plus, optionally, the other caption fields
(`sfx`, `dialogue`, `singing`, `bgm`, SPEC section 3), times in seconds from the clip's first
frame. A clip's shots are sorted, do not overlap and lie within the clip.
The model sees them as text: `tagged_caption` appends one tag per shot to the clip's global
caption,

  <text>a red circle, then a blue square</text>
  <shot start=0.00 end=1.00><text>a red circle ...</text><sfx>a low beep ...</sfx></shot>
  <shot start=1.00 end=2.00><text>a blue square ...</text><sfx>...</sfx></shot>

(one line here; no newlines in the caption), read by the text encoder like the rest of the
structured caption (SPEC section 3), with the Qwen template and the tiny encoder alike.
Training (`data.shot_captions`) and the sampler (`--shots`, or these tags in `--prompt`) build
the same string with this module.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

_SHOT = re.compile(r"<shot\s+start=([-+0-9.eE]+)\s+end=([-+0-9.eE]+)\s*>(.*?)</shot>", re.S)
FIELDS = ("text", "sfx", "dialogue", "singing", "bgm")   # a shot's caption, in this order
_FIELD = re.compile(r"<(%s)>(.*?)</\1>" % "|".join(FIELDS), re.S)
MIN_SECONDS = 1e-3   # a piece of a shot shorter than this on a clip is dropped
TOKEN_FIELDS = ("text_shot", "shot_spans")   # token_shots' fields of a tokenizer's output


class ShotError(ValueError):
  """Shots that cannot be used: not a list of spans, overlapping, or outside the clip."""


def check_shots(shots: Any, duration: float | None = None, *,
                what: str = "shots") -> list[dict[str, Any]]:
  """`shots` validated and canonical (floats, sorted by start; caption fields only when
  given, others dropped);
  ShotError naming `what` and the shot otherwise. `duration`: the clip's length in seconds,
  which the shots must lie within (a rounding of one millisecond is forgiven)."""
  if not isinstance(shots, (list, tuple)):
    raise ShotError(f"{what} must be a list of {{start, end, text}}, got {type(shots).__name__}")
  out = []
  for i, shot in enumerate(shots):
    if not isinstance(shot, dict):
      raise ShotError(f"{what}[{i}] must be an object with start, end and text")
    missing = [k for k in ("start", "end", "text") if k not in shot]
    if missing:
      raise ShotError(f"{what}[{i}] is missing {missing}")
    try:
      start, end = float(shot["start"]), float(shot["end"])
    except (TypeError, ValueError):
      raise ShotError(f"{what}[{i}]: start and end must be numbers of seconds") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
      raise ShotError(f"{what}[{i}]: needs 0 <= start < end, got start={start} end={end}")
    if duration is not None and end > duration + MIN_SECONDS:
      raise ShotError(f"{what}[{i}] ends at {end} s, past the clip's {duration:.3f} s")
    texts = {k: shot[k] for k in FIELDS if shot.get(k) is not None}
    bad = [k for k, v in texts.items() if not isinstance(v, str)]
    if bad:
      raise ShotError(f"{what}[{i}]: {bad} must be strings")
    out.append(dict(start=start, end=min(end, duration) if duration else end, **texts))
  out.sort(key=lambda s: s["start"])
  for a, b in zip(out, out[1:]):
    if b["start"] < a["end"] - MIN_SECONDS:
      raise ShotError(f"{what}: shots overlap ({a['start']}-{a['end']} s and "
                      f"{b['start']}-{b['end']} s)")
  return out


def clip_shots(shots: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
  """The parts of `shots` (on a longer timeline) that fall within [t0, t1), moved onto the
  clip's own timeline (0 at t0); pieces shorter than MIN_SECONDS are dropped."""
  out = []
  for s in shots:
    start, end = max(s["start"], t0), min(s["end"], t1)
    if end - start >= MIN_SECONDS:
      out.append(dict(s, start=round(start - t0, 6), end=round(end - t0, 6)))
  return out


def tagged_caption(caption: str, shots: list[dict[str, Any]] | None) -> str:
  """The caption the text encoder reads: the global caption, then one tag per shot. A
  global caption that only joins the shots' own (`global_caption`) is left out: the tags
  say it, in fewer tokens."""
  if not shots:
    return caption
  if caption == global_caption(shots):
    caption = ""
  tags = []
  for s in shots:
    body = "".join(f"<{k}>{_one_line(s[k])}</{k}>" for k in FIELDS if s.get(k))
    tags.append(f"<shot start={s['start']:.2f} end={s['end']:.2f}>{body}</shot>")
  return caption + "".join(tags)


def parse_tags(caption: str) -> tuple[str, list[dict[str, Any]]]:
  """(global caption, shots) of a caption with shot tags (`tagged_caption`'s inverse, up to
  the tags' two decimals); ShotError for a malformed tag."""
  shots = []
  for m in _SHOT.finditer(caption):
    body = m.group(3)
    fields = {k: v.strip() for k, v in _FIELD.findall(body)}
    if "text" not in fields:     # untagged words of the shot are its text
      fields["text"] = " ".join(_FIELD.sub(" ", body).split())
    shots.append(dict(start=m.group(1), end=m.group(2), **fields))
  rest = _SHOT.sub("", caption)
  if "<shot" in rest or "</shot>" in rest:
    raise ShotError(f"malformed shot tag in {caption[:120]!r}: write "
                    "<shot start=S end=E>...</shot>")
  return rest.strip(), check_shots(shots, what="shot tags")


def prompt_text(prompt: str, shots: list[dict[str, Any]] | None = None,
                duration: float | None = None) -> str:
  """The text the model reads for a sampling prompt: with shots (tags inside `prompt`, or
  `shots`; not both) the global caption (the prompt, or else the shots' texts joined) and
  one tag per shot, as training writes them (times checked against the clip's `duration`);
  a prompt without shots unchanged. ShotError otherwise."""
  base, tagged = parse_tags(prompt)
  if tagged and shots:
    raise ShotError("shots given twice: as tags in the prompt and as a shots list")
  shots = check_shots(shots or tagged, duration)
  if not shots:
    return prompt
  return tagged_caption(base or global_caption(shots), shots)


def token_shots(text: str, token_starts, max_shots: int) -> dict[str, np.ndarray]:
  """{text_shot: (N,) int32, shot_spans: (max_shots, 2) float32} of a tokenised `text`:
  token i (its first character at token_starts[i], -1 for none: padding, BOS) belongs to
  shot k + 1 when it lies inside the k-th <shot ...>...</shot> tag, else 0 (the global
  caption, the template); shot k's (start, end) seconds in row k, (-1, -1) for no shot.
  ShotError when the text has more than `max_shots` shots."""
  tags = list(_SHOT.finditer(text))
  if len(tags) > max_shots:
    raise ShotError(f"{len(tags)} shots, more than data.max_shots_per_clip={max_shots}")
  starts = np.asarray(token_starts, np.int64)
  ids = np.zeros(starts.shape, np.int32)
  spans = np.full((max_shots, 2), -1.0, np.float32)
  for k, m in enumerate(tags):
    ids[(starts >= m.start()) & (starts < m.end())] = k + 1
    spans[k] = float(m.group(1)), float(m.group(2))
  return dict(zip(TOKEN_FIELDS, (ids, spans)))


def read_file(path: str) -> list[dict[str, Any]]:
  """Shots from a JSON file holding `[{start, end, text, sfx?}, ...]`."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise ShotError(f"{path}: not JSON ({e})") from None
  return check_shots(value, what=path)


def global_caption(shots: list[dict[str, Any]]) -> str:
  """A whole-clip caption from shot captions: their texts (and sounds) joined by "then"."""
  text = ", then ".join(s["text"] for s in shots)
  sfx = [s["sfx"] for s in shots if s.get("sfx")]
  return f"<text>{text}</text>" + (f"<sfx>{', then '.join(sfx)}</sfx>" if sfx else "")


def _one_line(text: str) -> str:
  return " ".join(str(text).split())
