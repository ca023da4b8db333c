"""python -m skyreels_jax.sample --workdir=W --prompt=TEXT --out=OUT [--image=PNG] [--seed=S]

Writes, per prompt, OUT/sample_<i>.mp4 (H.264 + AAC at the config's fps and sample rate),
OUT/sample_<i>.wav and OUT/sample_<i>.json (the settings), plus OUT/contact_sheet.png.
On several hosts every process runs the sampler and process 0 writes the files.
"""

import json
import os

from absl import app, flags

from skyreels_jax.parallel import multihost

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt(s); repeat for several.",
                                    required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_IMAGE = flags.DEFINE_string("image", None, "First frame (PNG/JPG): image-to-video.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_STEPS = flags.DEFINE_integer("num_steps", None, "Solver steps (default: config.sample).")
_SOLVER = flags.DEFINE_enum("solver", None, ["euler", "heun"], "ODE solver.")
_VG = flags.DEFINE_float("video_guidance", None, "CFG scale for video.")
_AG = flags.DEFINE_float("audio_guidance", None, "CFG scale for audio.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_CLUSTER = multihost.define_flags()


def main(argv):
  del argv
  multihost.initialize_from_flags(_CLUSTER)  # before any other JAX call
  import dataclasses

  import jax
  import numpy as np
  from PIL import Image

  from skyreels_jax import runtime
  from skyreels_jax.sample import export
  from skyreels_jax.sample.sampler import Sampler, resize_image
  runtime.setup_compilation_cache()

  sampler = Sampler(_WORKDIR.value, step=_STEP.value)
  g, data = sampler.geometry, sampler.config.data
  image = None
  if _IMAGE.value:
    if not os.path.exists(_IMAGE.value):
      raise app.UsageError(f"--image={_IMAGE.value}: no such file")
    image = resize_image(np.asarray(Image.open(_IMAGE.value).convert("RGB")), g.height, g.width)
  settings = sampler.settings(seed=_SEED.value, num_steps=_STEPS.value, solver=_SOLVER.value,
                              video_guidance=_VG.value, audio_guidance=_AG.value)
  out = sampler.generate(list(_PROMPT.value), image=image, settings=settings)
  if jax.process_index() != 0:
    return
  os.makedirs(_OUT.value, exist_ok=True)
  for i, prompt in enumerate(_PROMPT.value):
    stem = os.path.join(_OUT.value, f"sample_{i}")
    audio = None if out["audio"] is None else out["audio"][i]
    export.write_mp4(stem + ".mp4", out["video"][i], data.fps, audio, data.sample_rate)
    if audio is not None:
      export.write_wav(stem + ".wav", audio, data.sample_rate)
    with open(stem + ".json", "w") as f:
      json.dump({"prompt": prompt, "workdir": os.path.abspath(_WORKDIR.value),
                 "checkpoint_step": sampler.step, "image": _IMAGE.value,
                 "task": "i2v" if image is not None else "t2av",
                 **dataclasses.asdict(settings)}, f, indent=2)
    print(stem + ".mp4")
  sheet = os.path.join(_OUT.value, "contact_sheet.png")
  export.write_contact_sheet(sheet, list(out["video"]), labels=list(_PROMPT.value))
  print(sheet)


if __name__ == "__main__":
  app.run(main)
