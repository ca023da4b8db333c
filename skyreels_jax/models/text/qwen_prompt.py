"""The Qwen2.5-VL prompt: a structured caption in a chat-style system + user message, with
reference images as `@image_k` and reference videos as `@video_k` visual inputs, tokenised
from a LOCAL folder (no downloads).

The chat markup is written here, not taken from the folder's jinja template, so the token
stream the MMDiT is trained on does not change with a tokenizer file. Placeholders are
expanded as `Qwen2_5_VLProcessor` does (one `<|image_pad|>` / `<|video_pad|>` per merged
patch); we call the tokenizer and the image processor directly because the processor and the
video processor classes need torchvision. Video frames are resized and normalised by the
image processor one by one and laid out in numpy as the video processor patchifies
(`video_patches`).

`QwenPromptTokenizer` is the host-side half of models/text's interface (picklable: grain
workers load the folder lazily); models/encoders.py pairs it with the frozen encoder.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from skyreels_jax.data import shots

CAPTION_TAGS = ("text", "sfx", "dialogue", "singing", "bgm")
SYSTEM_PROMPT = (
    "You describe a video with its sound. The caption has tagged parts: <text> the visual "
    "scene and action, <sfx> sound effects, <dialogue> spoken lines, <singing> sung lines, "
    "<bgm> background music. @image_k names the k-th reference image, @video_k the k-th "
    "reference video.")
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
# transformers' VideoMetadata.sampled_fps when a video comes without metadata.
DEFAULT_VIDEO_FPS = 24.0


def format_caption(parts: Mapping[str, str]) -> str:
  """{"text": ..., "sfx": ...} -> "<text>...</text><sfx>...</sfx>" in CAPTION_TAGS order,
  skipping empty parts."""
  unknown = set(parts) - set(CAPTION_TAGS)
  if unknown:
    raise ValueError(f"caption tags {sorted(unknown)}: choose from {CAPTION_TAGS}")
  return "".join(f"<{t}>{parts[t]}</{t}>" for t in CAPTION_TAGS if parts.get(t))


def _check_refs(caption: str, kind: str, given: int) -> None:
  refs = {int(k) for k in re.findall(rf"@{kind}_(\d+)", caption)}
  if refs and max(refs) > given:
    raise ValueError(f"caption mentions @{kind}_{max(refs)} but {given} {kind}s are given")


def prompt_text(caption: str, num_images: int = 0, num_videos: int = 0, *,
                system_prompt: str = SYSTEM_PROMPT) -> str:
  """The chat string (Qwen2.5-VL markup) before placeholder expansion. Image k appears as
  `@image_k: <|vision_start|><|image_pad|><|vision_end|>` ahead of the caption, then video k
  as `@video_k: <|vision_start|><|video_pad|><|vision_end|>`, so the caption's mentions and
  the visual tokens sit in one sequence."""
  _check_refs(caption, "image", num_images)
  _check_refs(caption, "video", num_videos)
  refs = "".join(f"@image_{k}: {VISION_START}{IMAGE_PAD}{VISION_END}\n"
                 for k in range(1, num_images + 1))
  refs += "".join(f"@video_{k}: {VISION_START}{VIDEO_PAD}{VISION_END}\n"
                  for k in range(1, num_videos + 1))
  return (f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
          f"<|im_start|>user\n{refs}{caption}<|im_end|>\n<|im_start|>assistant\n")


def video_patches(video: np.ndarray, image_processor) -> tuple[np.ndarray, np.ndarray]:
  """(F, H, W, 3) uint8 frames -> (pixel_values_videos (N, patch_dim) float32, grid (3,)),
  the layout of transformers' Qwen2VLVideoProcessor.patchify: F padded to a multiple of
  temporal_patch_size by repeating the last frame, rows in (t, h/m, w/m, m, m) order, each
  row (C, temporal, patch, patch). The image processor resizes and normalises each frame
  and repeats it over the temporal slots of its own patches; we keep slot 0 of each."""
  frames = np.asarray(video)
  if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise ValueError(f"a video is (F, H, W, 3) frames, got shape {frames.shape}")
  tp, p = image_processor.temporal_patch_size, image_processor.patch_size
  frames = list(frames) + [frames[-1]] * (-len(frames) % tp)
  vis = image_processor(images=frames, return_tensors="np")
  _, gh, gw = (int(v) for v in np.asarray(vis["image_grid_thw"])[0])
  pixels = np.asarray(vis["pixel_values"], np.float32)
  per_frame = pixels.reshape(len(frames), gh * gw, -1, tp, p, p)[:, :, :, 0]
  t = len(frames) // tp
  patches = per_frame.reshape(t, tp, gh * gw, -1, p, p).transpose(0, 2, 3, 1, 4, 5)
  return patches.reshape(t * gh * gw, -1), np.array([t, gh, gw], np.int64)


def _expand(text: str, pad: str, counts) -> str:
  """The k-th `pad` in `text` repeated counts[k] times."""
  pieces = text.split(pad)
  return pieces[0] + "".join(pad * int(n) + rest for n, rest in zip(counts, pieces[1:]))


class QwenPromptTokenizer:
  """caption -> {"text_ids" (max_length,) int32, "text_mask" bool}, right-padded and
  truncated at `max_length`; `encode(caption, images, videos)` adds pixel_values and
  image_grid_thw, pixel_values_videos, video_grid_thw and second_per_grid_ts.
  Loads `folder` (tokenizer files, and preprocessor_config.json for images) on first use."""

  def __init__(self, folder: str, max_length: int, system_prompt: str = SYSTEM_PROMPT,
               max_shots: int = 0):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist (nothing is "
                              f"downloaded: convert with tools/convert.py --kind=qwen2_5_vl)")
    self.folder, self.max_length, self.system_prompt = folder, max_length, system_prompt
    self.max_shots = max_shots   # > 0 (model.shot_attention): text_shot and shot_spans too
    self._tokenizer = self._image_processor = None

  def __getstate__(self):
    return dict(self.__dict__, _tokenizer=None, _image_processor=None)

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from transformers import AutoTokenizer  # late: transformers' tokenizer, on first use
      self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
    return self._tokenizer

  @property
  def image_processor(self):
    if self._image_processor is None:
      if not os.path.exists(os.path.join(self.folder, "preprocessor_config.json")):
        raise FileNotFoundError(f"{self.folder}: no preprocessor_config.json, no images")
      from transformers import AutoImageProcessor  # late: transformers' processor, first use
      self._image_processor = AutoImageProcessor.from_pretrained(self.folder,
                                                                 local_files_only=True)
    return self._image_processor

  def encode(self, caption: str, images: Sequence[Any] = (), videos: Sequence[Any] = (),
             video_fps: float | Sequence[float] = DEFAULT_VIDEO_FPS) -> dict[str, np.ndarray]:
    """`images`: PIL images or (H, W, 3) uint8 arrays, in @image_1, @image_2, ... order;
    `videos`: (F, H, W, 3) uint8 arrays in @video_1, ... order, with frames at `video_fps`
    (one value, or one per video), which sets second_per_grid_ts = temporal_patch / fps."""
    text = prompt_text(caption, len(images), len(videos), system_prompt=self.system_prompt)
    out: dict[str, np.ndarray] = {}
    expected = {IMAGE_PAD: 0, VIDEO_PAD: 0}
    if images:
      vis = self.image_processor(images=list(images), return_tensors="np")
      grid = np.asarray(vis["image_grid_thw"], np.int64)
      counts = grid.prod(-1) // self.image_processor.merge_size ** 2
      text = _expand(text, IMAGE_PAD, counts)
      out = {"pixel_values": np.asarray(vis["pixel_values"], np.float32),
             "image_grid_thw": grid}
      expected[IMAGE_PAD] = int(counts.sum())
    if videos:
      fps = np.broadcast_to(np.asarray(video_fps, np.float64), (len(videos),))
      pixels, grids = zip(*(video_patches(v, self.image_processor) for v in videos))
      grid = np.stack(grids)
      counts = grid.prod(-1) // self.image_processor.merge_size ** 2
      text = _expand(text, VIDEO_PAD, counts)
      tp = self.image_processor.temporal_patch_size
      out.update(pixel_values_videos=np.concatenate(pixels), video_grid_thw=grid,
                 second_per_grid_ts=(tp / fps).astype(np.float32))
      expected[VIDEO_PAD] = int(counts.sum())
    self._check_room()
    enc = self.tokenizer(text, max_length=self.max_length, padding="max_length",
                         truncation=True, padding_side="right", return_tensors="np",
                         return_offsets_mapping=bool(self.max_shots))
    ids = enc["input_ids"][0].astype(np.int32)
    if self.max_shots:   # the shot of each token, by its first character (data/shots.py)
      starts = np.where(enc["attention_mask"][0] > 0, enc["offset_mapping"][0][:, 0], -1)
      out.update(shots.token_shots(text, starts, self.max_shots))
    for pad, n in expected.items():
      if int((ids == self.tokenizer.convert_tokens_to_ids(pad)).sum()) != n:
        kind = "image" if pad == IMAGE_PAD else "video"
        raise ValueError(f"max_length={self.max_length} cuts the {kind} tokens ({n} needed "
                         f"after the system prompt): raise it or use smaller {kind}s")
    return {"text_ids": ids, "text_mask": enc["attention_mask"][0].astype(bool), **out}

  def _check_room(self) -> None:
    """Long captions are cut at max_length; a template that fills it alone would cut every
    caption to nothing (all prompts equal), so that is an error."""
    if getattr(self, "_template_length", None) is None:
      self._template_length = len(self.tokenizer(prompt_text("", 0, 0,
                                                             system_prompt=self.system_prompt))
                                  ["input_ids"])
    if self._template_length >= self.max_length:
      raise ValueError(f"text.max_length={self.max_length} leaves no room for the caption: "
                       f"the prompt template alone takes {self._template_length} tokens")

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    return self.encode(caption)

  def batch(self, captions: list[str]) -> dict[str, np.ndarray]:
    rows = [self(c) for c in captions]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
