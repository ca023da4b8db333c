"""The training curriculum of SPEC section 4, one config per stage, all at 16 fps.

  python -m skyreels_jax.train --config=configs/stages.py:3 --workdir=... \
      --config.data.path=RECORDS            # stage 3 of the small model
  --config=configs/stages.py:joint,hv13b    # the joint stage of hv13b
  --config=configs/stages.py:2,tiny         # stage 2 at tiny size (CPU, minutes)

Stages: 1 T2I 256px; 2 T2I + T2V 256px, 2-10 s; 3 + inpaint / I2V / V2V / edit (5% each),
2-15 s; 4 the same mix at 256 and 480px; 5 480 / 720 / 1080px, 3-15 s; 6 image references
20%, video references 20%, T2V 60%; audio (audio pretraining, up to 15 s); joint (T2V + T2AV
+ T2A at 720 / 1080px, 5-15 s); sft1, sft2 (the joint mix at lower learning rates, on the
curated sets data.path points at).

Mixtures are data: task weights (`data.tasks`, skyreels_jax/tasks/masks.py) and bucket
weights (`data.bucket_weights`; images are the `image_*` buckets, sound alone the `audio_*`
ones). Buckets not weighted here weigh by their record counts; weight 0 leaves one out.
Each stage runs in its own work directory, initialised from the previous stage's weights
(`--config.train.init_from=PREVIOUS_WORKDIR`: step 0, a fresh optimizer, schedule and data
order); `python -m launch.curriculum` chains them. At tiny size every stage keeps its task
and bucket-kind mixture at one small geometry (32x32, 1 s), so the chain runs on a CPU.
"""

from configs import hv13b, small, tiny
from skyreels_jax.data import buckets

SIZES = {"tiny": tiny, "small": small, "hv13b": hv13b}
P256 = ((256, 256), (192, 320), (320, 192))
P480 = ((480, 480), (384, 640), (640, 384))
P720 = ((720, 1280), (1280, 720))
P1080 = ((1088, 1920), (1920, 1088))   # 1088: divisible by the VAE's 8 and the patch's 2


TINY_RESOLUTIONS, TINY_DURATIONS = ((32, 32),), (1.0,)


def _weights(c, *, video: float, image: float, audio: float):
  """Bucket weights by kind, spread evenly over each kind's buckets."""
  groups = {"video": video, "image": image, "audio": audio}
  all_b = buckets.all_buckets(c.data)
  counts = {k: sum(b.kind == k for b in all_b) for k in groups}
  c.data.bucket_weights = {b.name: groups[b.kind] / counts[b.kind] for b in all_b}


def set_weights(mixture, **weights) -> None:
  """A stage's task weights: every task listed in configs/base.py stays (weight 0 unless
  given here), so --config.data.tasks.NAME=W still works on a stage config."""
  for name in mixture:
    mixture[name] = float(weights.pop(name, 0.0))
  if weights:
    raise ValueError(f"unknown tasks {sorted(weights)}")


def _stage(c, stage: str) -> dict[str, float]:
  """Sets the stage's data mixture; returns its bucket-kind split (video, image, audio)."""
  d = c.data
  d.refs = dict(none=1.0, image=0.0, video=0.0)
  d.audio_ref_rate = 0.0
  if stage == "1":
    d.resolutions, d.durations = P256, (2.0,)
    set_weights(d.tasks, t2v=1.0)
    split = dict(video=0.0, image=1.0, audio=0.0)
  elif stage == "2":
    d.resolutions, d.durations = P256, (2.0, 5.0, 10.0)
    set_weights(d.tasks, t2v=1.0)
    split = dict(video=0.7, image=0.3, audio=0.0)
  elif stage in ("3", "4", "5"):
    d.resolutions = {"3": P256, "4": P256 + P480, "5": P480 + P720 + P1080}[stage]
    d.durations = (3.0, 5.0, 10.0, 15.0) if stage == "5" else (2.0, 5.0, 10.0, 15.0)
    set_weights(d.tasks, t2v=0.8, inpaint=0.025, inpaint_stroke=0.025, i2v=0.05, extend=0.05,
                   inpaint_temporal=0.05)
    split = dict(video=0.8, image=0.2, audio=0.0)
  elif stage == "6":
    d.resolutions, d.durations = P480 + P720, (5.0, 10.0)
    set_weights(d.tasks, t2v=1.0)
    # SPEC: 60% T2V without references, 20% with 1-2 image references (stills), 20% with a
    # video reference (a 17-frame clip: ~1 s, 5 Wan latent frames), each from another clip
    # of the same source video (data/references.py).
    d.refs = dict(none=0.6, image=0.2, video=0.2)
    d.ref_images, d.ref_video_frames = 2, 17
    split = dict(video=1.0, image=0.0, audio=0.0)
  elif stage == "audio":
    d.resolutions, d.durations = P256, (5.0, 10.0, 15.0)
    set_weights(d.tasks, t2a=1.0)
    # 2 s of voice / music from elsewhere in the same source (43 Oobleck latents at 44.1 kHz,
    # hop 2048).
    d.audio_ref_rate, d.audio_ref_seconds = 0.2, 2.0
    split = dict(video=0.0, image=0.0, audio=1.0)
  elif stage in ("joint", "sft1", "sft2"):
    d.resolutions, d.durations = P720 + P1080, (5.0, 10.0, 15.0)
    set_weights(d.tasks, t2v=0.3, t2av=0.5, t2a=0.2)
    d.refs = dict(none=0.8, image=0.1, video=0.1)
    d.ref_images, d.ref_video_frames = 2, 17
    d.audio_ref_rate, d.audio_ref_seconds = 0.2, 2.0
    split = dict(video=0.9, image=0.0, audio=0.1)
    c.optim.lr = {"joint": 1e-4, "sft1": 3e-5, "sft2": 1e-5}[stage]
  else:
    raise ValueError(f"unknown stage {stage!r}; stages: 1-6, audio, joint, sft1, sft2")
  return split


def get_config(arg: str = "1"):
  """`arg` is "STAGE" or "STAGE,SIZE" (SIZE: tiny, small (default) or hv13b)."""
  stage, _, size = arg.partition(",")
  if (size or "small") not in SIZES:
    raise ValueError(f"unknown size {size!r}; sizes: {sorted(SIZES)}")
  c = SIZES[size or "small"].get_config()
  c.name = f"{c.name}_stage_{stage}"
  # The single geometry (data.height/width/num_frames) is the stage's first bucket, which
  # the AOT and memory tools use.
  split = _stage(c, stage)
  if size == "tiny":
    d = c.data
    d.resolutions, d.durations = TINY_RESOLUTIONS, TINY_DURATIONS
    d.ref_video_frames = min(d.ref_video_frames, 4)
    d.audio_ref_seconds = min(d.audio_ref_seconds, 0.5)
  _weights(c, **split)
  c.data.height, c.data.width = c.data.resolutions[0]
  c.data.num_frames = int(round(c.data.durations[0] * c.data.fps)) + int(c.data.endpoint_frame)
  return c
