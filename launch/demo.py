"""`make demo`: synthetic data -> tiny training (fixed budget) -> sampling -> sync scores
and the sample metrics (python -m skyreels_jax.sample.metrics: adherence, cleanliness,
AV-Align, each beside real clips and random frames).

Runs the same commands a user would (printed as they run), then prints the paths of the
MP4s, the contact sheet and the loss curve, and the audio-video sync score of the samples
next to the ceiling (real clips) and the floor (random video/audio pairs).

  python -m launch.demo [--out=demo_out] [--steps=2000] [--num_clips=512]
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from absl import app, flags

from launch import recipes

_OUT = flags.DEFINE_string("out", "demo_out", "Folder for data, run and samples.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Training steps of batch 2 (about 7 min on 2 "
                              "CPU cores).")
_CLIPS = flags.DEFINE_integer("num_clips", 512, "Synthetic clips to generate.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 30, "Solver steps when sampling.")



def _run(args: list[str]) -> None:
  print("\n$ " + " ".join(args), flush=True)
  subprocess.run([sys.executable, "-m", *args], check=True)


def _sync_scores(data_dir: str, sample_dir: str, num: int = 32) -> dict[str, dict]:
  import numpy as np
  from array_record.python.array_record_module import ArrayRecordReader

  from skyreels_jax.data.records import decode_clip
  from skyreels_jax.sample import export
  from skyreels_jax.sample.sync import sync_report

  clips = []
  for path in sorted(glob.glob(os.path.join(data_dir, "*.array_record"))):
    reader = ArrayRecordReader(path)
    clips += [decode_clip(r) for r in reader.read(0, min(num, reader.num_records()))]
    reader.close()
    if len(clips) >= num:
      break
  fps, sr = clips[0]["fps"], clips[0]["sample_rate"]
  real = [(c["video"], c["audio"]) for c in clips[:num]]
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(real))
  perm = np.where(perm == np.arange(len(real)), (perm + 1) % len(real), perm)
  shuffled = [(real[i][0], real[j][1]) for i, j in enumerate(perm)]
  samples = []
  for path in sorted(glob.glob(os.path.join(sample_dir, "*.mp4"))):
    m = export.read_mp4(path)
    video = m["video"]
    if video.shape[1] != clips[0]["video"].shape[1]:   # undo the export's upscaling
      f = video.shape[1] // clips[0]["video"].shape[1]
      video = video[:, ::f, ::f]
    samples.append((video, m["audio"]))
  return {"samples": sync_report(samples, fps, sr), "real clips (ceiling)": sync_report(real, fps, sr),
          "random pairs (floor)": sync_report(shuffled, fps, sr)}


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  data, work, samples = (os.path.join(out, d) for d in ("data", "run", "samples"))
  _run(["data_pipelines.synthetic", f"--out={data}", f"--num_clips={_CLIPS.value}"])
  _run(["data_pipelines.synthetic", f"--out={data}_prompts", "--num_clips=4", "--seed=999"])
  _run(["skyreels_jax.train", "--config=configs/tiny.py", f"--workdir={work}",
        f"--config.data.path={data}", f"--config.train.steps={_STEPS.value}",
        "--config.train.checkpoint_every=250", "--config.seed=0", *recipes.DEMO,
        *recipes.DEMO_BATCH])

  from array_record.python.array_record_module import ArrayRecordReader

  from skyreels_jax.data.records import decode_clip
  reader = ArrayRecordReader(glob.glob(os.path.join(f"{data}_prompts", "*.array_record"))[0])
  prompts = [decode_clip(r)["caption"] for r in reader.read(0, 4)]
  reader.close()
  prompt_flags = [f"--prompt={p}" for p in prompts]
  _run(["skyreels_jax.sample", f"--workdir={work}", f"--out={samples}",
        f"--num_steps={_SAMPLE_STEPS.value}", "--seed=0", *prompt_flags])

  from skyreels_jax.train.plots import plot_loss_curve
  curve = os.path.join(out, "loss_curve.png")
  plot_loss_curve(os.path.join(work, "metrics.jsonl"), curve)

  print("\n== outputs ==")
  for p in sorted(glob.glob(os.path.join(samples, "*.mp4"))):
    print("video+audio:", p)
  print("contact sheet:", os.path.join(samples, "contact_sheet.png"))
  print("loss curve:", curve)
  print("\n== audio-video sync (share of audio onsets within one frame of a visual bounce) ==")
  for name, r in _sync_scores(data, samples).items():
    print(f"{name:>22}: {r['mean']:.3f}  (n={r['n']})")
  # Content scores and AV-Align beside real clips and random frames (sample/metrics.py).
  _run(["skyreels_jax.sample.metrics", f"--samples={samples}", f"--reference={data}"])


if __name__ == "__main__":
  app.run(main)
