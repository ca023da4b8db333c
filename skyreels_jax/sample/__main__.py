"""python -m skyreels_jax.sample --workdir=W (--prompt=TEXT ... | --prompt_file=F) [--shots=F] --out=OUT
    [task: --image=PNG | --first=PNG --last=PNG |
           --video=MP4 (--extend=K | --mask=PNG|MP4|DIR [--audio_mask=S:E] | --audio_mask=S:E)]
    [references: --ref_image=PNG ... --ref_video=MP4 --audio_ref=WAV] [--seed=S]

Tasks (SPEC section 3): text-to-audio-video by default; --image image-to-video; --first and
--last start-end frames; --video with --extend=K keeps its first K latent frames (and their
sound) and generates the rest; --video with --mask inpaints (white = regenerate): a PNG holds
on every frame, an MP4 or a folder of PNGs (one per frame of --video, same size) is
spatio-temporal, downsampled to the latent grid by the training rule (tasks/given.py); the
audio is regenerated. With an instruction as --prompt ("make the red circle blue") it is an
edit, with --ref_image it fills the mask with the reference's subject. --audio_mask=START:END
(seconds) regenerates that span of --video's own sound track and keeps the rest (with --mask
or alone, then every frame is kept). References combine with any task.

--refiner_workdir=R runs the efficiency cascade (SPEC section 5; sample/cascade.py): the
--workdir run is the base (its low-res video, high-res keyframes if it makes them, and the
audio), R the refiner; the MP4 is at the refiner's size and frame rate with the base's audio.
--mesh=data=1,fsdp=2,sequence=2,tensor=2 samples on a mesh other than the training one.

--shots=FILE (JSON [{"start": s, "end": e, "text": ..., "sfx": ...}], seconds) makes a
multi-shot clip: the model reads the prompt (or, without --prompt, the shots' texts joined
by "then") with one <shot start=.. end=..> tag per shot, as in training; shot tags may also
be written inside --prompt. The run must have been trained with data.shot_captions.

--prompt_file: one prompt per line (shot tags allowed), or JSON lines {"prompt": ...,
"seed": ..., "shots": [...]}. Prompts run
in batches of --batch_size (padded to a full batch: one program). Prompt i gets seed
`--seed + i` unless its line gives one. Writes OUT/sample_<i>.mp4 (H.264 + AAC), .wav and
.json (the settings) and a contact sheet. With several processes every batch runs on the
whole mesh and process p writes the outputs of prompts p::count.
"""

import json
import os
import sys

from absl import app, flags
from tqdm import tqdm

from skyreels_jax.data import shots as shots_lib
from skyreels_jax.parallel import multihost
from skyreels_jax.sample import export
from skyreels_jax.tasks import given

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Prompt(s); repeat for several.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "TXT (one per line) or JSONL prompts.")
_SHOTS = flags.DEFINE_string("shots", None, "JSON [{start, end, text, sfx?}] (seconds): a "
                             "multi-shot clip, for every prompt (a run trained with "
                             "data.shot_captions).")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_BATCH = flags.DEFINE_integer("batch_size", None, "Prompts per batch (config.sample).")
_IMAGE = flags.DEFINE_string("image", None, "First frame (PNG/JPG): image-to-video.")
_FIRST = flags.DEFINE_string("first", None, "First frame of start-end generation.")
_LAST = flags.DEFINE_string("last", None, "Last frame of start-end generation.")
_VIDEO = flags.DEFINE_string("video", None, "Source video for --extend or --mask.")
_EXTEND = flags.DEFINE_integer("extend", None, "Latent frames of --video to keep.")
_MASK = flags.DEFINE_string("mask", None, "Inpaint / edit mask (white = regenerate): a PNG "
                            "(every frame), or an MP4 / PNG folder (per frame of --video).")
_AUDIO_MASK = flags.DEFINE_string("audio_mask", None, "START:END seconds of --video's sound "
                                  "to regenerate (the rest of its track is kept).")
_REF_IMAGE = flags.DEFINE_multi_string("ref_image", [], "Reference image(s).")
_REF_VIDEO = flags.DEFINE_string("ref_video", None, "Reference video clip.")
_AUDIO_REF = flags.DEFINE_string("audio_ref", None, "Reference audio (WAV/FLAC/MP3).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of prompt 0 (prompt i: seed + i).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Solver steps (default: config.sample).")
_SOLVER = flags.DEFINE_enum("solver", None, ["euler", "heun"], "ODE solver.")
_VG = flags.DEFINE_float("video_guidance", None, "CFG scale for video.")
_AG = flags.DEFINE_float("audio_guidance", None, "CFG scale for audio.")
_EG = flags.DEFINE_float("embedded_guidance", None, "The scale fed to a guidance-distilled "
                         "model's embedding (model.guidance_embed; default: config.sample), "
                         "apart from the CFG scales.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_LORA = flags.DEFINE_enum("lora", "merged", ["merged", "unmerged"], "A LoRA run: fold the "
                          "adapters into its base once, or keep them apart (folded per call).")
_REFINER = flags.DEFINE_string("refiner_workdir", None, "A refiner run: the cascade (base = "
                               "--workdir -> refiner -> decode) at the refiner's size and fps.")
_STEP_BAR = flags.DEFINE_enum(
    "step_bar", "auto", ["auto", "on", "off"], "A bar over each batch's solver steps. auto: on "
    "a terminal in a one-process run. Its program is compiled in every new process (the "
    "persistent XLA cache does not keep a program with a host callback).")
_REFINER_STEP = flags.DEFINE_integer("refiner_step", None, "Refiner checkpoint step.")
_REFINER_STEPS = flags.DEFINE_integer("refiner_num_steps", None, "Refiner solver steps.")
_MESH = flags.DEFINE_string("mesh", None, "Sampling mesh, e.g. data=1,fsdp=2,sequence=2,"
                            "tensor=2 (default: the run's config.mesh). Any mesh restores.")
_CLUSTER = multihost.define_flags()

USAGE = 2   # exit code of a usage error


def usage(message: str):
  return app.UsageError(message, exitcode=USAGE)


def parse_mesh(text: str, mesh_config) -> dict:
  """--mesh=data=1,fsdp=2,... -> a mesh config (axes not named: 1; dcn_* from the run's)."""
  from skyreels_jax.config import MESH_AXES
  out = {a: 1 for a in MESH_AXES}
  out.update({k: v for k, v in mesh_config.items() if k.startswith("dcn_")})
  for part in text.split(","):
    name, _, size = part.partition("=")
    if name.strip() not in MESH_AXES or not size.strip().lstrip("-").isdigit():
      raise usage(f"--mesh={text}: expected comma-separated AXIS=SIZE with AXIS in "
                  f"{MESH_AXES}")
    out[name.strip()] = int(size)
  return out


def task_of(v: dict) -> str:
  """The task the flags ask for; raises a usage error naming the flag on a bad combination
  or a missing file. v: flag name -> value."""
  for name in ("image", "first", "last", "video", "mask", "ref_video", "audio_ref",
               "prompt_file", "shots"):
    folder = name == "mask" and v.get(name) and os.path.isdir(v[name])  # PNG frames
    if v.get(name) and not (os.path.isfile(v[name]) or folder):
      raise usage(f"--{name}={v[name]}: no such file")
  for path in v.get("ref_image") or []:
    if not os.path.isfile(path):
      raise usage(f"--ref_image={path}: no such file")
  if v.get("prompt") and v.get("prompt_file"):
    raise usage("give --prompt or --prompt_file (one of them)")
  if not (v.get("prompt") or v.get("prompt_file") or v.get("shots")):
    raise usage("give --prompt or --prompt_file (or --shots alone)")
  if v.get("extend") is not None and not v.get("video"):
    raise usage("--extend needs --video")
  for name in ("mask", "audio_mask"):
    if v.get(name) and not v.get("video"):
      raise usage(f"--{name} needs --video")
  if v.get("audio_mask"):
    audio_span(v["audio_mask"])
  if v.get("video"):
    masks = bool(v.get("mask") or v.get("audio_mask"))
    if (v.get("extend") is not None) == masks:
      raise usage("--video needs one of --extend or --mask / --audio_mask")
    for other in ("image", "first", "last"):
      if v.get(other):
        raise usage(f"--{other} cannot be combined with --video")
    if v.get("extend") is not None:
      return "extend"
    return "inpaint" if v.get("mask") else "a_inpaint"
  if v.get("image"):
    for other in ("first", "last"):
      if v.get(other):
        raise usage(f"--image cannot be combined with --{other}")
    return "i2v"
  if bool(v.get("first")) != bool(v.get("last")):
    raise usage("--first and --last go together")
  return "start_end" if v.get("first") else "t2av"


def audio_span(text: str) -> tuple[float, float]:
  """--audio_mask=START:END (seconds) -> (start, end); a usage error else."""
  try:
    return given.parse_span(text)
  except ValueError as e:
    raise usage(f"--audio_mask={text}: {e}") from None


def read_prompts(path: str) -> list[dict]:
  """[{"prompt": str, "seed": int | None}] from a TXT (a prompt a line) or JSONL file; a
  usage error naming the flag and line otherwise."""
  try:
    return export.read_prompts(path)
  except ValueError as e:
    raise usage(f"--prompt_file={path}: {e}") from None


def build_condition(task: str, v: dict, config, geometry):
  """The Condition of the flags, media read at the run's geometry; usage errors name the
  flag (too short a video, --extend out of range, an unreadable file)."""
  from skyreels_jax.sample import conditions as C
  from skyreels_jax.models import encoders
  g, d = geometry, config.data
  tf = encoders.build_video(config.video_ae, weights=False).temporal_factor
  media = dict(fps=d.fps, height=g.height, width=g.width, sample_rate=d.sample_rate,
               channels=d.audio_channels)

  def read(flag, path, fn, *args, **kw):
    try:
      return fn(path, *args, **kw)
    except Exception as e:  # pylint: disable=broad-except  (any decoder error: name the flag)
      raise usage(f"--{flag}={path}: {e}") from None

  image = lambda flag: read(flag, v[flag], C.read_image, g.height, g.width)
  if task == "t2av":
    cond = C.text_to_video(g)
  elif task == "i2v":
    cond = C.image_to_video(g, tf, image("image"))
  elif task == "start_end":
    cond = C.start_end(g, tf, image("first"), image("last"))
  else:
    source = read("video", v["video"], C.read_video, **media)
    video, audio = source.frames, source.audio
    if task == "extend":
      k = v["extend"]
      if not 1 <= k < g.video_grid[0]:
        raise usage(f"--extend={k}: keep 1 to {g.video_grid[0] - 1} of the "
                    f"{g.video_grid[0]} latent frames")
      try:
        cond = C.extend(g, tf, d.fps, d.audio_channels, video, audio, k)
      except ValueError as e:
        raise usage(f"--extend={k} --video={v['video']}: {e}") from None
    else:
      keep_samples = None
      if v.get("audio_mask"):
        if not config.model.use_audio:
          raise usage("--audio_mask: the run has no audio stream (model.use_audio=False)")
        if audio is None:
          raise usage(f"--audio_mask: --video={v['video']} has no sound track")
        keep_samples = given.span_keep(g.num_samples, d.sample_rate,
                                       *audio_span(v["audio_mask"]))
      if task == "inpaint":
        mask = read("mask", v["mask"], C.read_video_mask, source, height=g.height,
                    width=g.width)
        cond = C.inpaint(g, d.audio_channels, video, mask, tf, audio, keep_samples)
      else:
        cond = C.audio_inpaint(g, d.audio_channels, video, audio, keep_samples)
  refs = [read("ref_image", p, C.read_image, g.height, g.width) for p in v["ref_image"] or []]
  ref_video = read("ref_video", v["ref_video"], C.read_video, **media).frames if v.get(
      "ref_video") else None
  audio_ref = None
  if v.get("audio_ref"):
    if not config.model.use_audio:
      raise usage("--audio_ref: the run has no audio stream (model.use_audio=False)")
    audio_ref = read("audio_ref", v["audio_ref"], C.read_audio, sample_rate=d.sample_rate,
                     channels=d.audio_channels)
  prefix = C.block_prefix(tf) if g.num_frames == g.video_grid[0] * tf else C.causal_prefix(tf)
  cond = C.add_references(cond, g, tf, images=refs, video=ref_video, audio=audio_ref,
                          vae_frames=prefix)
  cond.fields = {k: v.get(k) for k in ("image", "first", "last", "video", "extend", "mask",
                                       "audio_mask", "ref_image", "ref_video", "audio_ref")}
  return cond


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag is one line and status 2 (absl prints its help)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _say_usage(str(e))


def _say_usage(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE)


def main(argv):
  """A user's mistake (app.UsageError) is one line on stderr and status 2, not absl's help
  text and not a traceback."""
  try:
    _main(argv)
  except app.UsageError as e:
    _say_usage(str(e))


def check_out(path: str) -> None:
  """--out must be a folder, or a path whose first existing ancestor is a writable folder
  (a usage error otherwise); nothing is created yet."""
  if os.path.isdir(path):
    ok, why = os.access(path, os.W_OK | os.X_OK), "no permission to write there"
  elif os.path.lexists(path):
    ok, why = False, "a file is in the way"
  else:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
      parent = os.path.dirname(parent)
    ok = os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)
    why = f"{parent} is not a writable folder"
  if not ok:
    raise bad_out(path, why)


def bad_out(path: str, why: str):
  return usage(f"--out={path}: cannot be the output folder ({why})")


def read_shots(path: str | None) -> list[dict] | None:
  """--shots=FILE -> [{start, end, text, sfx?}]; a usage error naming the flag otherwise."""
  if not path:
    return None
  try:
    return shots_lib.read_file(path)
  except shots_lib.ShotError as e:
    raise usage(f"--shots={path}: {e}") from None


def tag_shots(rows: list[dict], config, shots: list[dict] | None, where: str = "") -> None:
  """export.with_shots for the run of `config`; its refusal a usage error (`where` names
  the run when it is not --workdir's)."""
  try:
    export.with_shots(rows, config, shots)
  except ValueError as e:
    raise usage(where + (f"--shots: {e}" if _SHOTS.value else str(e))) from None


def _main(argv):
  del argv
  names = ("prompt", "prompt_file", "shots", "image", "first", "last", "video", "extend",
           "mask", "audio_mask", "ref_image", "ref_video", "audio_ref")
  values = {n: flags.FLAGS[n].value for n in names}
  task = task_of(values)     # before JAX starts: a usage error costs nothing
  if _REFINER.value and not os.path.isfile(os.path.join(_REFINER.value, "config.json")):
    raise usage(f"--refiner_workdir={_REFINER.value}: not a training run (no config.json)")
  check_out(_OUT.value)
  multihost.initialize_from_flags(_CLUSTER)  # before any other JAX call
  import dataclasses

  import jax

  from skyreels_jax import runtime
  from skyreels_jax.config import derive
  from skyreels_jax.sample.sampler import Sampler, load_run_config
  runtime.quiet_until_routed()   # JAX's start-up INFO lines: not on the console

  config = load_run_config(_WORKDIR.value)
  geometry, _ = derive(config)
  cond = build_condition(task, values, config, geometry)   # media read before any compile
  rows = (read_prompts(_PROMPT_FILE.value) if _PROMPT_FILE.value
          else [{"prompt": p, "seed": None} for p in _PROMPT.value or [""]])
  shots, plain = read_shots(_SHOTS.value), [dict(row) for row in rows]
  tag_shots(rows, config, shots)
  if _REFINER.value:   # the refiner reads the same captions: its run must know shot tags too
    tag_shots(plain, load_run_config(_REFINER.value), shots,
              f"--refiner_workdir={_REFINER.value}: ")
  for i, row in enumerate(rows):
    row["seed"] = _SEED.value + i if row["seed"] is None else int(row["seed"])
  batch = int(config.sample.batch_size) if _BATCH.value is None else _BATCH.value
  if batch < 1:
    raise usage(f"--batch_size={batch}: must be at least 1")

  try:   # made only now: a usage error above leaves nothing behind
    os.makedirs(_OUT.value, exist_ok=True)
  except OSError as e:
    raise bad_out(_OUT.value, e.strerror) from None
  runtime.setup_compilation_cache()
  # Library INFO logs (orbax's restore, absl) to OUT/logs/; the console: warnings, the bars.
  runtime.route_logs(_OUT.value, "sample")
  mesh = None
  if _MESH.value:
    from skyreels_jax.parallel.mesh import make_mesh
    mesh = make_mesh(parse_mesh(_MESH.value, config.mesh))
  try:
    sampler = Sampler(_WORKDIR.value, step=_STEP.value, config=config, mesh=mesh,
                      lora_merged=_LORA.value == "merged")
  except FileNotFoundError as e:   # no checkpoint, or a LoRA run whose base is gone
    raise usage(f"--workdir={_WORKDIR.value}: {e}") from None
  settings = sampler.settings(seed=_SEED.value, num_steps=_STEPS.value, solver=_SOLVER.value,
                              video_guidance=_VG.value, audio_guidance=_AG.value,
                              embedded_guidance=_EG.value)
  cascade = None
  if _REFINER.value:
    from skyreels_jax.sample.cascade import Cascade
    try:
      cascade = Cascade(None, _REFINER.value, refiner_step=_REFINER_STEP.value, base=sampler)
    except ValueError as e:
      raise usage(f"--refiner_workdir={_REFINER.value}: {e}") from None
    # The same task at the refiner's size and frame rate: what it keeps (a source video's
    # regions, a first frame) comes from the high-res media, not the base's low-res render.
    refiner_cond = build_condition(task, values, cascade.refiner.config,
                                   cascade.refiner.geometry)
    refiner_settings = cascade.refiner.settings(
        num_steps=_REFINER_STEPS.value, solver=_SOLVER.value, video_guidance=_VG.value,
        audio_guidance=_AG.value, embedded_guidance=_EG.value)
  data = (cascade.refiner if cascade else sampler).config.data
  me, count = jax.process_index(), jax.process_count()
  written = []
  # A bar over the prompts on a terminal, and one over each batch's solver steps (fed by a
  # host callback inside the program; every process must compile the same program, so
  # `auto` shows it only in a one-process run).
  bar = tqdm(total=len(rows), unit="prompt", desc="sample", disable=None if me == 0 else True)
  show_steps = _STEP_BAR.value == "on" or (_STEP_BAR.value == "auto" and count == 1
                                           and sys.stderr.isatty())
  num_steps = settings.num_steps + (refiner_settings.num_steps if cascade is not None else 0)
  for start in range(0, len(rows), batch):
    chunk = rows[start:start + batch]
    padded = chunk + [chunk[-1]] * (batch - len(chunk))   # same shapes: one program
    prompts, seeds = [r["prompt"] for r in padded], [r["seed"] for r in padded]
    steps = (tqdm(total=num_steps, unit="step", desc="solver", leave=False,
                  disable=me != 0) if show_steps else None)
    tick = None if steps is None else (lambda *_: steps.update(1))
    if cascade is not None:
      out = cascade.generate(prompts, condition=cond, high_res=refiner_cond,
                             seeds=seeds, base_settings=settings,
                             refiner_settings=refiner_settings, on_step=tick)
    else:
      out = sampler.generate(prompts, condition=cond, seeds=seeds, settings=settings,
                             on_step=tick)
    if steps is not None:
      steps.close()
    for j, row in enumerate(chunk):
      i = start + j
      if i % count != me:
        continue
      stem = os.path.join(_OUT.value, f"sample_{i}")
      audio = None if out["audio"] is None else out["audio"][j]
      export.write_mp4(stem + ".mp4", out["video"][j], data.fps, audio, data.sample_rate)
      if audio is not None:
        export.write_wav(stem + ".wav", audio, data.sample_rate)
      with open(stem + ".json", "w") as f:
        meta = {"prompt": row["prompt"], "index": i,
                "workdir": os.path.abspath(_WORKDIR.value),
                "checkpoint_step": sampler.step, "task": task, **cond.fields,
                **dataclasses.asdict(settings), "seed": row["seed"],
                "mesh": dict(sampler.mesh.shape), "fps": data.fps,
                "size": [int(data.height), int(data.width)]}
        if cascade is not None:
          meta["refiner"] = {"workdir": os.path.abspath(_REFINER.value),
                             "checkpoint_step": cascade.refiner.step,
                             **dataclasses.asdict(refiner_settings), "seed": row["seed"]}
        json.dump(meta, f, indent=2)
      written.append((row["prompt"], out["video"][j]))
      tqdm.write(stem + ".mp4")
    bar.update(len(chunk))
  bar.close()
  if written:
    sheet = os.path.join(_OUT.value, "contact_sheet.png" if count == 1
                         else f"contact_sheet_{me}.png")
    export.write_contact_sheet(sheet, [w[1] for w in written], labels=[w[0] for w in written])
    print(sheet)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
