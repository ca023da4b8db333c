"""The data-given conditions of a record as example fields (tasks/given.py trains them).

With a data-given task in the mixture every example of the run carries the fields that
task reads, records without them included (filled, flagged off), so a batch keeps one
shape per bucket and a task whose record lacks a field falls back inside the train step:

  given_mask        float32 (F, H, W): the record's keep mask (a static one repeated over
                    the frames); 1 where the record has none      has_mask bool
  source_video      float32 (F, H, W, 3) in [-1, 1]: the clip before the edit; the clip
                    itself where the record has none              has_source bool
  edit_text_ids /   the tokenized edit prompt: the instruction alone (data.edit_prompt =
  edit_text_mask    "instruction") or appended to the caption ("append"); the caption's
                    tokens where the record has no instruction
  given_refs        float32 (N, H, W, 3) in [-1, 1]: the record's reference stills,
                    right-aligned in data.ref_images slots (extra ones left out)
  given_ref_count   int32                                         has_refs bool
  given_audio_mask  float32 (S,): the record's audio keep mask    has_audio_mask bool
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

TASK_FIELDS = {"inpaint_given": ("mask",), "edit_pair": ("mask", "source"),
               "ref_inpaint": ("mask", "refs"), "a_inpaint_given": ("audio_mask",)}


@dataclasses.dataclass(frozen=True)
class GivenFields:
  mask: bool = False
  source: bool = False
  refs: int = 0                  # slots (0: no reference fields)
  audio_mask: bool = False
  edit_prompt: str = "instruction"

  @classmethod
  def from_config(cls, data_config) -> "GivenFields | None":
    """The fields the config's mixtures need; None without data-given tasks."""
    weights = {**dict(data_config.tasks), **dict(data_config.audio_tasks)}
    on = {f for task, fields in TASK_FIELDS.items() if float(weights.get(task, 0.0)) > 0
          for f in fields}
    if not on:
      return None
    return cls(mask="mask" in on, source="source" in on,
               refs=int(data_config.ref_images) if "refs" in on else 0,
               audio_mask="audio_mask" in on, edit_prompt=str(data_config.edit_prompt))

  def fields(self, clip: dict[str, Any], example: dict[str, np.ndarray],
             tokenizer: Callable[[str], dict]) -> dict[str, np.ndarray]:
    """The given fields of `clip` (a decoded record) for its `example` (the preprocessed
    clip: video (F, H, W, 3), audio (S, C)), cut to the example's frames and samples."""
    out = {}
    video = example["video"]
    frames = video.shape[0]
    has_video = bool(example.get("has_video", True))
    if self.mask:
      mask = clip.get("mask") if has_video else None
      out["has_mask"] = np.bool_(mask is not None)
      out["given_mask"] = (np.ones(video.shape[:3], np.float32) if mask is None else
                           np.broadcast_to(mask[:frames], video.shape[:3]).astype(np.float32))
    if self.source:
      src = clip.get("source_video") if has_video else None
      out["has_source"] = np.bool_(src is not None)
      src = video if src is None else src[:frames]     # uint8 pixels either way
      out["source_video"] = src.astype(np.float32) / 127.5 - 1.0
      prompt = clip["caption"]
      instruction = clip.get("instruction")
      if instruction:
        prompt = (instruction if self.edit_prompt == "instruction"
                  else f"{prompt} {instruction}".strip())
      # ids and mask only: an edit prompt has no shots (tasks/shots.py)
      out.update({"edit_" + k: v for k, v in tokenizer(prompt).items()
                  if k in ("text_ids", "text_mask")})
    if self.refs:
      refs = clip.get("references") if has_video else None
      slots = np.zeros((self.refs,) + video.shape[1:], np.float32)
      n = 0 if refs is None else min(len(refs), self.refs)
      if n:
        slots[self.refs - n:] = refs[:n].astype(np.float32) / 127.5 - 1.0
      out.update(given_refs=slots, given_ref_count=np.int32(n), has_refs=np.bool_(n > 0))
    if self.audio_mask:
      samples = example["audio"].shape[0] if "audio" in example else 0
      mask = clip.get("audio_mask") if example.get("has_audio", False) else None
      keep = np.ones((samples,), np.float32)
      if mask is not None:
        n = min(samples, len(mask))
        keep[:n] = mask[:n]
      out.update(given_audio_mask=keep, has_audio_mask=np.bool_(mask is not None))
    return out


  def latent_fields(self, rec: dict[str, Any], example: dict[str, np.ndarray],
                    text_key: str) -> dict[str, np.ndarray]:
    """The same fields from a latent record (data/latents.py schema 2): given_keep (T, h, w)
    and given_audio_keep (Ta,) on the latent grids, source_latent, given_ref_latents
    (N, h, w, C), edit text (`text_key`: text_ids or text_embedding)."""
    out = {}
    z = example["video_latent"]
    has_video = bool(example.get("has_video", True))
    f32 = lambda x: np.asarray(x, np.float32)
    if self.mask:
      keep = rec.get("given_keep") if has_video else None
      out["has_mask"] = np.bool_(keep is not None)
      out["given_keep"] = np.ones(z.shape[:3], np.float32) if keep is None else f32(keep)
    if self.source:
      src = rec.get("source_latent") if has_video else None
      out["has_source"] = np.bool_(src is not None)
      out["source_latent"] = z.copy() if src is None else f32(src)
      edit = rec.get("edit_" + text_key)
      out["edit_" + text_key] = (example[text_key] if edit is None
                                 else np.asarray(edit, example[text_key].dtype))
      out["edit_text_mask"] = (example["text_mask"] if edit is None
                               else np.asarray(rec["edit_text_mask"], bool))
    if self.refs:
      refs = rec.get("reference_latents") if has_video else None
      slots = np.zeros((self.refs,) + z.shape[1:], np.float32)
      n = 0 if refs is None else min(len(refs), self.refs)
      if n:
        slots[self.refs - n:] = f32(refs[:n])
      out.update(given_ref_latents=slots, given_ref_count=np.int32(n),
                 has_refs=np.bool_(n > 0))
    if self.audio_mask:
      length = example["audio_latent"].shape[0] if "audio_latent" in example else 0
      keep = rec.get("given_audio_keep") if example.get("has_audio", False) else None
      out.update(given_audio_keep=np.ones((length,), np.float32) if keep is None
                 else f32(keep), has_audio_mask=np.bool_(keep is not None))
    return out


def batch_fields(data_config, batch: int, *, num_frames: int, height: int, width: int,
                 num_samples: int, channels: int, text_length: int
                 ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{field: (shape, numpy dtype)} of the given fields of a clip batch (tools/aot.py's
  abstract batch), from what `GivenFields.fields` makes of a record without any."""
  fields = GivenFields.from_config(data_config)
  if fields is None:
    return {}
  example = {"video": np.zeros((num_frames, height, width, 3), np.float32),
             "audio": np.zeros((num_samples, channels), np.float32), "has_audio": True}
  tokens = lambda _: {"text_ids": np.zeros((text_length,), np.int32),
                      "text_mask": np.zeros((text_length,), bool)}
  out = fields.fields({"caption": ""}, example, tokens)
  return {k: ((batch, *np.shape(v)), np.asarray(v).dtype) for k, v in out.items()}
