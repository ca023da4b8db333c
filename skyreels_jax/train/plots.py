"""Loss-curve plot from the trainer's metrics JSONL (one dict per line: step, loss, ...)."""

import json
import math

import numpy as np

CURVES = ("loss", "loss_video", "loss_audio")


def read_metrics(metrics_jsonl_path) -> list:
  """Dicts with a numeric `step`, one per valid JSON line; other lines are skipped."""
  rows = []
  with open(metrics_jsonl_path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:  # partial line of a running job, log noise, blank line
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
        rows.append(row)
  return rows


def _series(rows: list, key: str) -> tuple:
  """(steps, values) of the finite, positive values of `key` (log scale needs > 0)."""
  pts = [(r["step"], r[key]) for r in rows
         if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0]
  pts.sort(key=lambda p: p[0])
  return np.array([p[0] for p in pts], np.float64), np.array([p[1] for p in pts], np.float64)


def smooth(values: np.ndarray, weight: float | None = None) -> np.ndarray:
  """Debiased exponential moving average in log space (TensorBoard style).

  The default weight grows with the number of points, so a curve of 20 points is barely
  smoothed and one of 10,000 is smoothed over about a hundred points.
  """
  if values.size == 0:
    return values
  if weight is None:
    weight = 1.0 - 1.0 / max(1.0, values.size / 100.0 + 1.0)
  logs = np.log(values)
  out = np.empty_like(logs)
  acc, norm = 0.0, 0.0
  for i, v in enumerate(logs):
    acc = weight * acc + (1.0 - weight) * v
    norm = weight * norm + (1.0 - weight)
    out[i] = acc / norm
  return np.exp(out)


def plot_loss_curve(metrics_jsonl_path, png_path, title: str | None = None) -> None:
  """Plots loss (and loss_video / loss_audio when logged) against step, log y, to a PNG.

  Raw points are drawn faint, the smoothed curve on top. A file with no usable rows still
  gives a PNG (an empty plot saying so), so a caller at the end of a run never fails here.
  """
  # The Agg canvas is attached to this one figure: no pyplot, so no global backend switch
  # (matplotlib.use would close a caller's open pyplot figures) and nothing at import time.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # late: heavy, only when plotting
  from matplotlib.figure import Figure  # late: heavy, only when plotting

  rows = read_metrics(metrics_jsonl_path)
  fig = Figure(figsize=(8, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  drawn = 0
  for key, color in zip(CURVES, ("black", "tab:blue", "tab:orange")):
    steps, values = _series(rows, key)
    if steps.size == 0:
      continue
    ax.plot(steps, values, ".", color=color, alpha=0.25, markersize=3)
    ax.plot(steps, smooth(values), "-", color=color, linewidth=1.5, label=key)
    drawn += 1
  if drawn:
    ax.set_yscale("log")
    ax.legend(loc="upper right")
  else:
    ax.text(0.5, 0.5, "no loss values", ha="center", va="center", transform=ax.transAxes)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title or str(metrics_jsonl_path))
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(str(png_path), format="png")
