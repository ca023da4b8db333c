"""The cheaper cascade's quality cost: a refiner that starts from the upsampled low-res clip
at t = refiner.start_t and runs few steps, against the full-step refiner (from noise, all
steps), on held-out procedural clips.

Two tiny refiners (configs/tiny_refiner.py at 32x32 targets, 8 frames at 16 fps, from 16x16
at 8 fps) train the same number of steps on the same clips: one with start_t = 0, one with
start_t = --start_t (its training follows tasks/refiner.start_path). Each refines the
held-out clips' exact low-res views (a perfect base model, so only the refiner is measured),
with the keyframes training uses, and is scored by PSNR and SSIM (scikit-image) of its output
against the ground-truth high-res clip. The floor: the low-res view upsampled by the
autoencoder's latent upsampling alone (the refiner's condition, decoded).

  python benchmarks/refiner_start.py [--steps=1000] [--start_t=0.5] [--fast_steps=8]
  python benchmarks/refiner_start.py --quick        # the same code path, a few steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from data_pipelines.synthetic import geometry_from_config, make_clip, write_dataset  # noqa: E402
from configs import tiny_refiner  # noqa: E402
from skyreels_jax.sample.sampler import Sampler  # noqa: E402
from skyreels_jax.tasks.refiner import refiner_video  # noqa: E402
from skyreels_jax.train.trainer import train  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "refiner_start.json")
KEYFRAMES = (0, 7)


def config(data: str, steps: int, start_t: float):
  c = tiny_refiner.get_config()
  c.data.path, c.data.height, c.data.width, c.data.num_frames = data, 32, 32, 8
  c.refiner.start_t = start_t
  # The demo's recipe (launch/demo.py, measured there): x-prediction for video.
  c.flow.video_prediction, c.flow.logit_mean, c.flow.logit_std = "data", 0.8, 0.8
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, 50
  return c


def scores(out: np.ndarray, truth: np.ndarray) -> dict:
  """Mean PSNR (dB) and SSIM over the frames of uint8 clips (F, H, W, 3)."""
  psnr = [peak_signal_noise_ratio(t, o, data_range=255) for o, t in zip(out, truth)]
  ssim = [structural_similarity(t, o, channel_axis=-1, data_range=255, win_size=7)
          for o, t in zip(out, truth)]
  return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def refine(sampler: Sampler, clip: dict, num_steps: int, seed: int) -> tuple:
  """(refined clip, decoded condition) as uint8 (F, H, W, 3), from the clip's exact low-res
  view and its keyframes, as training builds them (tasks/refiner.refiner_video), and its
  own audio track given, as the cascade gives the base's."""
  pixels = clip["video"][None].astype(np.float32) / 127.5 - 1.0
  vae = sampler.codecs.video_ae
  pieces = jax.tree.map(np.asarray, refiner_video(
      pixels, jax.random.key(seed), refiner=sampler.config.refiner, video_ae=vae,
      frames=KEYFRAMES))
  cond = {"cond_latent": pieces["cond"], "keep_v": pieces["keep"],
          "keyframes": pieces["keyframes"], "keyframe_times": pieces["keyframe_times"],
          "given_audio": np.asarray(sampler.codecs.audio_ae.encode(clip["audio"][None]))}
  out = sampler.generate(["x"], seeds=[seed], settings=sampler.settings(num_steps=num_steps),
                         latent_condition=cond)
  floor = np.asarray(vae.decode(pieces["cond"]))[0]
  to_u8 = lambda x: np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return np.asarray(out["video"])[0], to_u8(floor)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=1000, help="training steps of each refiner")
  p.add_argument("--start_t", type=float, default=0.5)
  p.add_argument("--full_steps", type=int, default=30, help="the full-step refiner's steps")
  p.add_argument("--fast_steps", type=int, default=8, help="steps from start_t")
  p.add_argument("--clips", type=int, default=8, help="held-out clips")
  p.add_argument("--quick", action="store_true", help="a few steps: the code path only")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.clips, args.full_steps, args.fast_steps = 4, 2, 2, 2
  t0 = time.time()
  root = tempfile.mkdtemp(prefix="refiner_start_")
  data = os.path.join(root, "data")
  geometry = geometry_from_config(config(data, 1, 0.0).data)
  write_dataset(data, num_clips=64, seed=0, **geometry)
  rng = np.random.default_rng(999)   # held out: another seed than the training clips
  held_out = [make_clip(rng, **geometry) for _ in range(args.clips)]
  runs = {"full": (0.0, args.full_steps), "start": (args.start_t, args.fast_steps)}
  results = {}
  for name, (start_t, steps) in runs.items():
    workdir = os.path.join(root, name)
    train(config(data, args.steps, start_t), workdir)
    sampler = Sampler(workdir)
    rows = [refine(sampler, clip, steps, seed=i) for i, clip in enumerate(held_out)]
    per_clip = [scores(out, clip["video"]) for (out, _), clip in zip(rows, held_out)]
    results[name] = {"start_t": start_t, "sampling_steps": steps,
                     **{k: float(np.mean([s[k] for s in per_clip])) for k in ("psnr", "ssim")}}
    if name == "full":
      floor = [scores(f, clip["video"]) for (_, f), clip in zip(rows, held_out)]
      results["upsampled_condition"] = {
          k: float(np.mean([s[k] for s in floor])) for k in ("psnr", "ssim")}
  report = {"train_steps": args.steps, "held_out_clips": args.clips, "results": results,
            "refiner_cost_ratio": (args.fast_steps / args.full_steps),
            "run_seconds": round(time.time() - t0, 1), "jax_version": jax.__version__,
            "cpu_count": os.cpu_count(), "quick": args.quick}
  for name, r in results.items():
    print(f"{name:<20} psnr {r['psnr']:.2f} dB  ssim {r['ssim']:.4f}"
          + (f"  (start_t {r['start_t']}, {r['sampling_steps']} steps)" if "start_t" in r
             else ""))
  out = args.out or (None if args.quick else RESULTS)
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
      json.dump(report, f, indent=1)
  f, s = results["full"], results["start"]
  print(f"psnr_drop={f['psnr'] - s['psnr']:.2f} ssim_drop={f['ssim'] - s['ssim']:.4f} "
        f"refiner_steps={args.fast_steps}/{args.full_steps}")
  return report


if __name__ == "__main__":
  main()
