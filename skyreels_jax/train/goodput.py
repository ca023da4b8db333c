"""Goodput of a training run: productive step time / wall time, and where the rest went.

Library code (the trainer prints it at the end of a run); the command line is
tools/goodput.py. From RUN/events.jsonl (train/events.py), summarize() gives:
{"goodput", "wall_s", "productive_s", "compile_s", "save_s", "eval_s", "startup_s",
"redone_s", "skipped_s", "restart_gap_s", "unaccounted_s", "starts", "preemptions", "fallbacks",
"skipped_steps", "steps"}.

- wall_s: first start -> the last event (or now, while the run is alive: not known here).
- productive_s: time in steps that count: the step time of every logged interval, less the
  steps that a later start did again (redone_s) and the non-finite steps that were not applied
  (skipped_s, at the mean step time).
- compile_s: each start's first step (compile + one step); save_s: the loop blocked on
  checkpoint saves; eval_s: validation and samples during training (their compiles
  included); startup_s: process start -> first step dispatched (imports, restore,
  data); restart_gap_s: a start's last event -> the next start (the process gone: killed,
  waiting for a scheduler); unaccounted_s: the rest (steps after the last log of a start that
  was killed, logging).
"""

from __future__ import annotations

import json

from skyreels_jax.train.events import read_events


def _sessions(rows: list[dict]) -> list[list[dict]]:
  out: list[list[dict]] = []
  for row in rows:
    if row["event"] == "start" or not out:
      out.append([])
    out[-1].append(row)
  return out


def summarize(workdir: str) -> dict:
  """The goodput summary of WORKDIR (see the module doc); {} when it has no events."""
  rows = read_events(workdir)
  if not rows:
    return {}
  sessions = _sessions(rows)
  intervals: list[list[float]] = []   # [first step, last step, seconds] of counted steps
  totals = dict(compile_s=0.0, save_s=0.0, eval_s=0.0, startup_s=0.0, redone_s=0.0,
                restart_gap_s=0.0)
  counts = dict(starts=0, preemptions=0, fallbacks=0)
  skipped: dict[int, bool] = {}
  t0 = sessions[0][0].get("t_process", sessions[0][0]["t"])
  for i, session in enumerate(sessions):
    counts["starts"] += session[0]["event"] == "start"
    if i:
      t_start = session[0].get("t_process", session[0]["t"])
      totals["restart_gap_s"] += max(0.0, t_start - sessions[i - 1][-1]["t"])
    for row in session:
      kind = row["event"]
      if kind == "ready":
        totals["startup_s"] += row.get("startup_s", 0.0)
        resumed = row["step"]
        for iv in intervals:   # steps after the resumed one are done again
          if iv[1] > resumed and iv[1] >= iv[0]:
            cut = (iv[1] - max(iv[0] - 1, resumed)) / (iv[1] - iv[0] + 1)
            totals["redone_s"] += iv[2] * cut
            iv[2] *= 1 - cut
            iv[1] = max(iv[0] - 1, resumed)
        for s in [s for s in skipped if s > resumed]:
          del skipped[s]
      elif kind == "first_step":
        totals["compile_s"] += row["seconds"]
      elif kind == "progress" and row["steps"] > 0:
        intervals.append([row["step"] - row["steps"] + 1, row["step"], row["step_s"]])
      elif kind == "save":
        totals["save_s"] += row["blocked_s"]
      elif kind in ("eval", "samples"):
        totals["eval_s"] += row["seconds"]
      elif kind == "skipped":
        skipped[row["step"]] = True
      elif kind == "preempted":
        counts["preemptions"] += 1
      elif kind == "fallback":
        counts["fallbacks"] += 1
  steps = sum(max(0, iv[1] - iv[0] + 1) for iv in intervals)
  step_time = sum(iv[2] for iv in intervals)
  skipped_s = step_time / steps * len(skipped) if steps else 0.0
  productive = max(0.0, step_time - skipped_s)
  wall = rows[-1]["t"] - t0
  out = {"goodput": productive / wall if wall > 0 else 0.0, "wall_s": wall,
         "productive_s": productive, **totals, "skipped_s": skipped_s}
  out["unaccounted_s"] = wall - sum(v for k, v in out.items() if k.endswith("_s")
                                    and k != "wall_s")
  out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
  return {**out, **counts, "skipped_steps": len(skipped), "steps": steps}


def format_summary(summary: dict) -> str:
  """Human lines, then the summary as one JSON line (the last line)."""
  if not summary:
    return json.dumps(summary)
  wall = summary["wall_s"] or 1.0
  lines = [f"goodput {summary['goodput']:.1%} of {summary['wall_s']:.1f} s wall time "
           f"({summary['starts']} start(s), {summary['preemptions']} preemption(s), "
           f"{summary['fallbacks']} checkpoint fallback(s), {summary['skipped_steps']} "
           "skipped step(s))"]
  for key in ("productive_s", "compile_s", "save_s", "eval_s", "startup_s", "redone_s",
              "skipped_s", "restart_gap_s", "unaccounted_s"):
    lines.append(f"  {key[:-2]:>13}: {summary[key]:9.2f} s  {summary[key] / wall:6.1%}")
  return "\n".join(lines + [json.dumps(summary)])
