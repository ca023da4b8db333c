"""`python -m launch.sweep --summarize --root=DIR`: one row per run of ROOT/sweep.json.

Columns: the run's name and overrides, its state (done / running / failed: the error's last
line / pending), its last step, final and best training loss, the last and best eval_loss
(with eval_loss_video, eval_loss_audio) where the run validates, and its mean steps/s. Written
as a markdown table (stdout), ROOT/summary.csv and ROOT/summary.png (every run's training
loss, and its eval_loss dashed, against the step).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np

from launch.overrides import UsageError
from launch.sweep import previous_process
from skyreels_jax.train.plots import read_metrics, smooth

COLUMNS = ("run", "state", "step", "final_loss", "best_loss", "eval_loss", "best_eval_loss",
           "eval_loss_video", "eval_loss_audio", "steps_per_sec")


def last_error_line(workdir: str) -> str:
  """The last line of the run's console log that names an error (else its last line)."""
  path = os.path.join(workdir, "sweep.log")
  if not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
  return (errors or lines or [""])[-1][:200]


EXIT_PREEMPTED = 75   # skyreels_jax/train/preemption.py: saved, stopped; a rerun resumes


def run_state(workdir: str, steps: int, saved: int, last_step: int) -> str:
  if saved >= steps:       # what the sweep's rerun skips
    return "done"
  status_file = os.path.join(workdir, "status.json")
  if os.path.exists(status_file):
    with open(status_file) as f:
      code = json.load(f).get("returncode")
    if code == EXIT_PREEMPTED:
      return "interrupted (stopped at a checkpoint; a rerun resumes)"
    if code not in (0, None):
      return f"failed (exit {code}): {last_error_line(workdir)}"
  if not os.path.exists(status_file) and previous_process(workdir) is not None:
    return "running"
  return "interrupted (a rerun resumes)" if last_step > 0 else "pending"


def summarize_run(root: str, run: dict) -> tuple[dict, list[dict]]:
  workdir = os.path.join(root, run["name"])
  path = os.path.join(workdir, "metrics.jsonl")
  rows = read_metrics(path) if os.path.exists(path) else []   # torn last lines skipped
  train = [r for r in rows if isinstance(r.get("loss"), (int, float))]
  evals = [r for r in rows if isinstance(r.get("eval_loss"), (int, float))]
  rates = [r["steps_per_sec"] for r in train if isinstance(r.get("steps_per_sec"), (int, float))]
  from skyreels_jax.weights import runs  # late: imports jax
  # The newest of the last logged step and the last saved one (a run stopped between logs).
  saved = runs.newest_step_on_disk(workdir)
  last_step = max([int(r.get("step", 0)) for r in rows] + [saved, 0])
  out = {"run": run["name"], **{f"config.{k}": v for k, v in run["overrides"].items()},
         "state": run_state(workdir, run["steps"], saved, last_step), "step": last_step}
  if train:
    out["final_loss"] = train[-1]["loss"]
    out["best_loss"] = min(r["loss"] for r in train)
  if evals:
    out["eval_loss"] = evals[-1]["eval_loss"]
    out["best_eval_loss"] = min(r["eval_loss"] for r in evals)
    for k in ("eval_loss_video", "eval_loss_audio"):
      if k in evals[-1]:
        out[k] = evals[-1][k]
  if rates:
    out["steps_per_sec"] = sum(rates) / len(rates)
  return out, rows


def _cell(v) -> str:
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.4g}"
  return str(v).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], columns: list[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def plot(path: str, curves: dict[str, list[dict]]) -> None:
  from matplotlib.figure import Figure  # late: heavy, only to plot
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # late: see above
  fig = Figure(figsize=(9, 5.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for i, (name, rows) in enumerate(curves.items()):
    colour = f"C{i % 10}"
    train = [(r["step"], r["loss"]) for r in rows
             if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])
             and r["loss"] > 0]
    evals = [(r["step"], r["eval_loss"]) for r in rows
             if isinstance(r.get("eval_loss"), (int, float))]
    if train:   # raw faint, smoothed solid (train/plots.smooth); a dot per point when few
      steps, losses = (np.array(v, np.float64) for v in zip(*train))
      few = len(steps) <= 50
      if not few:
        ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
      ax.plot(steps, losses if few else smooth(losses), color=colour, label=name,
              marker="o" if few else None, markersize=3)
    if evals:
      ax.plot(*zip(*evals), color=colour, linestyle="--", marker="o", markersize=3,
              label=f"{name} (eval)")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


def main(root: str, metric: str | None) -> int:
  path = os.path.join(root, "sweep.json")
  if not os.path.exists(path):
    raise UsageError(f"--root={root}: no sweep.json (launch the sweep first)")
  with open(path) as f:
    sweep = json.load(f)
  rows, curves = [], {}
  for run in sweep["runs"]:
    row, metrics = summarize_run(root, run)
    rows.append(row)
    curves[run["name"]] = metrics
  keys = [k for r in rows for k in r if k.startswith("config.")]
  overrides = list(dict.fromkeys(keys))
  columns = ["run", *overrides, *[c for c in COLUMNS[1:] if any(c in r for r in rows)]]
  if metric is None:
    metric = "eval_loss" if any("eval_loss" in r for r in rows) else "final_loss"
  if metric not in columns:
    raise UsageError(f"--metric={metric}: not a column of this sweep ({', '.join(columns)})")
  print(table(rows, columns))
  with open(os.path.join(root, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  plot(os.path.join(root, "summary.png"), curves)
  scored = [r for r in rows if isinstance(r.get(metric), (int, float))
            and not math.isnan(r[metric])]
  if scored:
    best = min(scored, key=lambda r: r[metric])
    print(f"\nbest by {metric}: {best['run']} ({metric}={best[metric]:.4g})")
  else:
    print(f"\nno run has {metric} yet")
  print(f"wrote {os.path.join(root, 'summary.csv')} and {os.path.join(root, 'summary.png')}")
  sys.stdout.flush()
  return 0
