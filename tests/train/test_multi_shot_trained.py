"""Do the shots come out where they were asked for? A tiny model trained for a few minutes
on procedural 2-shot clips (the demo's recipe, shot tags and the shot-aware cross-attention),
sampled with a 2-shot prompt (a red circle, then a blue square) and with the shots swapped.
Each half of a sample (the frames of one shot) gets its dominant colour: the RGB channel
with the most lit pixels. benchmarks/multi_shot.py is the same measurement at the demo's
size; this one is cut down to fit the suite (8 frames, no audio, 400 steps: measured 24
halves right of 24, none under the swapped order).

Data and training run as a user types them, in one process on one CPU device (the
suite's 8 simulated devices make a tiny step 5x slower)."""

import os
import subprocess
import sys
import pytest

from launch import recipes
from skyreels_jax.data import shots
from skyreels_jax.sample.metrics import shot_order_scores
from skyreels_jax.sample.sampler import Sampler

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RED, BLUE = 0, 2
A = [dict(start=0.0, end=0.5, text="a red circle bounces around a dark room"),
     dict(start=0.5, end=1.0, text="a blue square bounces around a dark room")]
B = [dict(A[1], start=0.0, end=0.5), dict(A[0], start=0.5, end=1.0)]
SEEDS = 6
MARGIN = 0.5     # share right under the asked order minus share right under the swapped one
GEOMETRY = ["--config.data.num_frames=8"]


def _run(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_each_shot_shows_its_captions_colour(tmp_path):
  data, work = str(tmp_path / "data"), str(tmp_path / "run")
  _run("data_pipelines.synthetic", f"--out={data}", "--num_clips=256", "--shots=2",
       "--config=configs/tiny.py", *GEOMETRY)
  _run("skyreels_jax.train", "--config=configs/tiny.py", f"--workdir={work}",
       f"--config.data.path={data}", "--config.model.use_audio=False", *GEOMETRY,
       *recipes.SHOTS, *recipes.DEMO, "--config.train.steps=400", "--config.train.checkpoint_every=400",
       "--config.train.log_every=100")
  sampler = Sampler(work)
  prompts = [shots.prompt_text("", s, 1.0) for s in (A, B) for _ in range(SEEDS)]
  video = sampler.generate(prompts, seeds=list(range(SEEDS)) * 2,
                           settings=sampler.settings(num_steps=20))["video"]
  right, swapped = shot_order_scores(video, [(RED, BLUE)] * SEEDS + [(BLUE, RED)] * SEEDS)
  assert right - swapped >= MARGIN, (right, swapped)
  # Each sample shows its shapes (a dark sample would score as red: argmax of nothing).
  assert ((video > 128).sum(axis=(1, 2, 3, 4)) > 50).all()
