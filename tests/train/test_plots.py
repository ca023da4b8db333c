"""Loss-curve PNG from a metrics JSONL (skyreels_jax/train/plots.py)."""

import json
import math

import numpy as np
from PIL import Image

from skyreels_jax.train import plots


def write_metrics(path, steps=300):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    f.write("not json at all\n")
    for step in range(0, steps, 5):
      loss_video = 2.0 * math.exp(-step / 80) + 0.1 + 0.05 * rng.random()
      loss_audio = 1.0 * math.exp(-step / 120) + 0.05 + 0.05 * rng.random()
      row = dict(step=step, loss=loss_video + loss_audio, loss_video=loss_video,
                 loss_audio=loss_audio, lr=1e-3)
      f.write(json.dumps(row) + "\n")
      if step == 100:
        f.write('{"step": 101, "loss": NaN}\n')  # Python's json writes NaN: dropped, no crash
        f.write("[1, 2, 3]\n")
        f.write('{"event": "checkpoint"}\n')
    f.write('{"step": 999, "loss": 0.')  # a line cut by a running job


def test_read_metrics_skips_bad_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  write_metrics(path)
  rows = plots.read_metrics(path)
  assert len(rows) == 61  # 60 good rows + the NaN row (its loss is filtered when plotting)
  steps, values = plots._series(rows, "loss")  # pylint: disable=protected-access
  assert steps.size == 60 and np.all(np.diff(steps) > 0) and np.all(np.isfinite(values))


def test_smooth_follows_trend():
  values = np.exp(-np.arange(400) / 100.0) * (1 + 0.3 * np.sin(np.arange(400)))
  out = plots.smooth(values)
  assert out.shape == values.shape
  assert out[0] == values[0]  # debiased: starts at the first point
  trend = np.exp(-np.arange(400) / 100.0)
  assert np.abs(np.log(out[200:] / trend[200:])).max() < 0.1  # noise is smoothed out
  assert np.abs(np.log(values[200:] / trend[200:])).max() > 0.2


def test_plot_loss_curve_writes_png(tmp_path):
  path, png = tmp_path / "metrics.jsonl", tmp_path / "loss.png"
  write_metrics(path)
  plots.plot_loss_curve(path, png)
  image = Image.open(png)
  assert image.format == "PNG" and image.size == (800, 450)
  pixels = np.asarray(image.convert("RGB")).astype(np.int32)
  assert pixels.std() > 10  # not a blank canvas
  # Three curves: black (loss), blue (video), orange (audio) pixels are all present.
  blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80)
  orange = (pixels[..., 0] > 200) & (pixels[..., 1] > 100) & (pixels[..., 2] < 60)
  assert blue.sum() > 100 and orange.sum() > 100


def test_plot_loss_curve_empty_file(tmp_path):
  path, png = tmp_path / "empty.jsonl", tmp_path / "empty.png"
  path.write_text("garbage\n")
  plots.plot_loss_curve(path, png)
  assert Image.open(png).size == (800, 450)
