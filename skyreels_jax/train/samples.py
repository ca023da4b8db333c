"""Samples during training (train.sample_every): the EMA weights generate the run's prompts
on the training mesh through the sampler's own code (sample/sampler.Sampler.from_params:
no copy of the sampler, nothing read from disk), into WORKDIR/samples/<step>/:
sample_<i>.mp4 (H.264 + AAC), .wav, .json (prompt, seed, settings) and contact_sheet.png,
and to TensorBoard (the contact sheet, each sample's sound). A step's folder is written
once (a resumed run that samples the same step again leaves it as it is).

train.sample_prompts: prompts, or one path to a prompt file (a prompt per line, or JSON
lines {"prompt": ..., "seed": ...}); prompt i gets seed `seed + i` unless its line gives one.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from PIL import Image

from skyreels_jax.config import ConfigError
from skyreels_jax.sample import export
from skyreels_jax.sample.sampler import Sampler

SAMPLES = "samples"


def prompts_of(config) -> list[dict]:
  """[{"prompt", "seed"}] of train.sample_prompts (a file path when it names one file);
  prompts with shots become the text the model reads (export.with_shots)."""
  given = list(config.train.sample_prompts)
  if len(given) == 1 and os.path.isfile(given[0]):
    try:
      rows = export.read_prompts(given[0])
    except (OSError, ValueError) as e:
      raise ConfigError("train.sample_prompts", f"{given[0]}: {e}") from None
  elif len(given) == 1 and _names_a_file(given[0]):   # a mistyped path: not a caption
    raise ConfigError("train.sample_prompts", f"{given[0]!r}: no such prompt file")
  else:
    rows = [{"prompt": p, "seed": None} for p in given]
  for i, row in enumerate(rows):
    row["seed"] = config.seed + i if row["seed"] is None else int(row["seed"])
  return export.with_shots(rows, config)


def _names_a_file(text: str) -> bool:
  """A prompt file's path, not a caption: one word with a folder or a prompt file's suffix."""
  return (not any(c.isspace() for c in text)
          and (os.sep in text or text.endswith((".txt", ".jsonl", ".json"))))


class TrainingSamples:
  """Generates and writes the samples of one step: `__call__(step, ema_params)`."""

  def __init__(self, config, workdir: str, *, mesh, codecs, tokenizer, frozen,
               lora_scale: float | None = None):
    self.config, self.workdir = config, workdir
    self.rows = prompts_of(config)
    # Built here, outside the training loop's mesh context (an abstract model traced under
    # an active mesh would carry logical axis names as mesh axes); weights come per call.
    self.sampler = Sampler.from_params(config, None, step=0, mesh=mesh, codecs=codecs,
                                       tokenizer=tokenizer, frozen=frozen,
                                       lora_scale=lora_scale)

  def __call__(self, step: int, ema_params, tensorboard=None) -> str:
    """Samples of `ema_params` (a LoRA run: (base, EMA adapters)) after `step`; returns the
    folder. Every process generates (the program spans the mesh); process 0 writes."""
    self.sampler.params, self.sampler.step = ema_params, step
    settings = self.sampler.settings(num_steps=self.config.train.sample_num_steps or None)
    out = self.sampler.generate([r["prompt"] for r in self.rows],
                                seeds=[r["seed"] for r in self.rows], settings=settings)
    folder = os.path.join(self.workdir, SAMPLES, str(step))
    if jax.process_index() != 0 or os.path.isdir(folder):
      return folder
    d = self.config.data
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for i, row in enumerate(self.rows):
      stem = os.path.join(tmp, f"sample_{i}")
      audio = None if out["audio"] is None else out["audio"][i]
      export.write_mp4(stem + ".mp4", out["video"][i], d.fps, audio, d.sample_rate)
      if audio is not None:
        export.write_wav(stem + ".wav", audio, d.sample_rate)
      with open(stem + ".json", "w") as f:
        json.dump({**settings.__dict__, "prompt": row["prompt"], "seed": row["seed"],
                   "index": i, "checkpoint_step": step, "fps": d.fps,
                   "size": [int(d.height), int(d.width)], "weights": "ema"}, f, indent=2)
    sheet = os.path.join(tmp, "contact_sheet.png")
    export.write_contact_sheet(sheet, list(out["video"]),
                               labels=[r["prompt"] for r in self.rows])
    os.replace(tmp, folder)    # complete or absent
    if tensorboard is not None:
      tensorboard.add_image("samples/contact_sheet",
                            np.asarray(Image.open(os.path.join(folder, "contact_sheet.png"))),
                            step, dataformats="HWC")
      if out["audio"] is not None:
        for i in range(len(self.rows)):
          tensorboard.add_audio(f"samples/audio_{i}", np.asarray(out["audio"][i]).mean(-1),
                                step, sample_rate=d.sample_rate)
      tensorboard.flush()
    return folder
