"""Throughput of a training step from its model inputs: tokens and analytic FLOPs
(flops.py), and the model FLOPs utilisation against a device's peak.

MFU = achieved model FLOPs / peak: the step's analytic train FLOPs (3 x forward, no remat
recompute: remat's extra forward is not useful work) per second per device, over the
device's dense bf16 peak. Peaks from the vendors' data sheets (dense, no sparsity); a
device not in the table (a CPU) has no MFU.
"""

from __future__ import annotations

import math
from typing import Any

from skyreels_jax.perf.flops import mmdit_train_flops

# Dense bf16 peak FLOP/s per chip, by a substring of jax's `device_kind` (first match wins:
# the longer names come first).
PEAK_BF16_FLOPS = (
    ("TPU v6 lite", 918e12),     # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),     # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),          # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),            # SXM / NVL
    ("A100", 312e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device of `device_kind`, or None (unknown: no MFU)."""
  for name, peak in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def step_cost(mcfg, inputs: dict[str, Any]) -> dict[str, int]:
  """{"tokens": model tokens of the batch (video + audio, references and keyframes
  included), "flops": analytic train FLOPs} from the model inputs' shapes (the dict
  tasks/examples.training_inputs returns, as arrays or ShapeDtypeStructs)."""
  pt, ph, pw = mcfg.video_patch
  pa = mcfg.audio_patch_size

  def video(key):
    if key not in inputs:
      return 0
    shape = inputs[key].shape        # (B, T, h, w, C)
    return math.ceil(shape[1] / pt) * (shape[2] // ph) * (shape[3] // pw)

  b = inputs["video"].shape[0]
  text = inputs["text"] if "text" in inputs else inputs["text_ids"]
  tokens = dict(batch=b, video_tokens=video("video"), text_len=int(text.shape[1]),
                video_ref_tokens=video("video_refs") + video("keyframes"))
  if mcfg.use_audio and "audio" in inputs:
    tokens["audio_tokens"] = math.ceil(inputs["audio"].shape[1] / pa)
    if "audio_refs" in inputs:
      tokens["audio_ref_tokens"] = math.ceil(inputs["audio_refs"].shape[1] / pa)
  count = b * (tokens["video_tokens"] + tokens["video_ref_tokens"]
               + tokens.get("audio_tokens", 0) + tokens.get("audio_ref_tokens", 0))
  return {"tokens": int(count), "flops": int(mmdit_train_flops(mcfg, **tokens))}
