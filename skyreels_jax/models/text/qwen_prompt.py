"""The Qwen2.5-VL prompt: a structured caption in a chat-style system + user message, with
reference images as `@image_k` visual inputs, tokenised from a LOCAL folder (no downloads).

The chat markup is written here, not taken from the folder's jinja template, so the token
stream the MMDiT is trained on does not change with a tokenizer file. Image placeholders are
expanded as `Qwen2_5_VLProcessor` does (one `<|image_pad|>` per merged patch); we call the
tokenizer and the image processor directly because the processor class needs torchvision.

`QwenPromptTokenizer` is the host-side half of models/text's interface (picklable: grain
workers load the folder lazily); `text_encoder_parts` gives the tokenizer, the encoder
factory and the width for a `TextEncoderSpec`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

CAPTION_TAGS = ("text", "sfx", "dialogue", "singing", "bgm")
SYSTEM_PROMPT = (
    "You describe a video with its sound. The caption has tagged parts: <text> the visual "
    "scene and action, <sfx> sound effects, <dialogue> spoken lines, <singing> sung lines, "
    "<bgm> background music. @image_k names the k-th reference image.")
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
_IMAGE_REF = re.compile(r"@image_(\d+)")


def format_caption(parts: Mapping[str, str]) -> str:
  """{"text": ..., "sfx": ...} -> "<text>...</text><sfx>...</sfx>" in CAPTION_TAGS order,
  skipping empty parts."""
  unknown = set(parts) - set(CAPTION_TAGS)
  if unknown:
    raise ValueError(f"caption tags {sorted(unknown)}: choose from {CAPTION_TAGS}")
  return "".join(f"<{t}>{parts[t]}</{t}>" for t in CAPTION_TAGS if parts.get(t))


def prompt_text(caption: str, num_images: int = 0, system_prompt: str = SYSTEM_PROMPT) -> str:
  """The chat string (Qwen2.5-VL markup) before image-token expansion. Image k appears as
  `@image_k: <|vision_start|><|image_pad|><|vision_end|>` ahead of the caption, so the
  caption's `@image_k` mentions and the image tokens sit in one sequence."""
  refs = {int(k) for k in _IMAGE_REF.findall(caption)}
  if refs and max(refs) > num_images:
    raise ValueError(f"caption mentions @image_{max(refs)} but {num_images} images are given")
  images = "".join(f"@image_{k}: {VISION_START}{IMAGE_PAD}{VISION_END}\n"
                   for k in range(1, num_images + 1))
  return (f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
          f"<|im_start|>user\n{images}{caption}<|im_end|>\n<|im_start|>assistant\n")


class QwenPromptTokenizer:
  """caption -> {"text_ids" (max_length,) int32, "text_mask" bool}, right-padded and
  truncated at `max_length`; `encode(caption, images)` adds pixel_values and image_grid_thw.
  Loads `folder` (tokenizer files, and preprocessor_config.json for images) on first use."""

  def __init__(self, folder: str, max_length: int, system_prompt: str = SYSTEM_PROMPT):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist (nothing is "
                              f"downloaded: convert with tools/convert.py --kind=qwen2_5_vl)")
    self.folder, self.max_length, self.system_prompt = folder, max_length, system_prompt
    self._tokenizer = self._image_processor = None

  def __getstate__(self):
    return dict(self.__dict__, _tokenizer=None, _image_processor=None)

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from transformers import AutoTokenizer
      self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
    return self._tokenizer

  @property
  def image_processor(self):
    if self._image_processor is None:
      if not os.path.exists(os.path.join(self.folder, "preprocessor_config.json")):
        raise FileNotFoundError(f"{self.folder}: no preprocessor_config.json, no images")
      from transformers import AutoImageProcessor
      self._image_processor = AutoImageProcessor.from_pretrained(self.folder,
                                                                 local_files_only=True)
    return self._image_processor

  def encode(self, caption: str, images: Sequence[Any] = ()) -> dict[str, np.ndarray]:
    """`images`: PIL images or (H, W, 3) uint8 arrays, in @image_1, @image_2, ... order."""
    text = prompt_text(caption, len(images), self.system_prompt)
    out: dict[str, np.ndarray] = {}
    expected = 0
    if images:
      vis = self.image_processor(images=list(images), return_tensors="np")
      grid = np.asarray(vis["image_grid_thw"], np.int64)
      counts = grid.prod(-1) // self.image_processor.merge_size ** 2
      pieces = text.split(IMAGE_PAD)
      text = pieces[0] + "".join(IMAGE_PAD * int(n) + p for n, p in zip(counts, pieces[1:]))
      out = {"pixel_values": np.asarray(vis["pixel_values"], np.float32),
             "image_grid_thw": grid}
      expected = int(counts.sum())
    enc = self.tokenizer(text, max_length=self.max_length, padding="max_length",
                         truncation=True, padding_side="right", return_tensors="np")
    ids = enc["input_ids"][0].astype(np.int32)
    image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if int((ids == image_id).sum()) != expected:
      raise ValueError(f"max_length={self.max_length} cuts the image tokens ({expected} "
                       f"needed after the system prompt): raise it or use smaller images")
    return {"text_ids": ids, "text_mask": enc["attention_mask"][0].astype(bool), **out}

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    return self.encode(caption)

  def batch(self, captions: list[str]) -> dict[str, np.ndarray]:
    rows = [self(c) for c in captions]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_encoder(path: str, *, output_layer: int = -1, dtype=None, param_dtype=None):
  """The frozen encoder from a converted folder (tools/convert.py: converted.json + orbax
  params) or a transformers folder (config.json + safetensors), with hidden state
  `output_layer` and the given dtypes."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from skyreels_jax.tools import convert, qwen_mapping

  if os.path.exists(os.path.join(path, "converted.json")):
    source = convert.restore(path, "qwen2_5_vl")
  else:
    source = qwen_mapping.load_hf_folder(path)
  param_dtype = param_dtype or jnp.float32
  encoder = qwen_mapping.abstract_encoder(
      dataclasses.replace(source.config, output_layer=output_layer), dtype, param_dtype)
  nnx.update(encoder, jax.tree.map(lambda a: a.astype(param_dtype), nnx.state(source)))
  return encoder


def hidden_size(path: str) -> int:
  """The embedding width of a converted or transformers folder, without reading weights."""
  converted = os.path.join(path, "converted.json")
  if os.path.exists(converted):
    with open(converted) as f:
      return int(json.load(f)["module_config"]["hidden_size"])
  with open(os.path.join(path, "config.json")) as f:
    c = json.load(f)
  return int((c.get("text_config") or c)["hidden_size"])


def text_encoder_parts(checkpoint: str, tokenizer_dir: str, max_length: int,
                       output_layer: int = -1, *, dtype=None, param_dtype=None):
  """(tokenizer, make_encoder(rngs), width) for models/text's TextEncoderSpec (frozen)."""
  tokenizer = QwenPromptTokenizer(tokenizer_dir, max_length)
  make = lambda rngs: load_encoder(checkpoint, output_layer=output_layer, dtype=dtype,
                                   param_dtype=param_dtype)
  return tokenizer, make, hidden_size(checkpoint)
