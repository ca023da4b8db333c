"""Goodput from events.jsonl: every second of a made-up run lands in its bucket."""

import json

import pytest

from skyreels_jax.tools import goodput


def _write(path, rows):
  with open(path / "events.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    f.write('{"event": "progress", "t": 9')   # a line cut by a kill -9: ignored


def test_buckets_of_a_preempted_killed_and_resumed_run(tmp_path):
  _write(tmp_path, [
      # Start 1: 10 s startup, 20 s first step, steps 2-9 in 8 s, a 1 s save, preempted.
      {"event": "start", "t": 2.0, "t_process": 0.0},
      {"event": "ready", "t": 10.0, "step": 0, "startup_s": 10.0},
      {"event": "first_step", "t": 30.0, "step": 1, "seconds": 20.0},
      {"event": "progress", "t": 34.0, "step": 5, "steps": 4, "step_s": 4.0},
      {"event": "save", "t": 35.0, "step": 5, "blocked_s": 1.0, "reason": "interval"},
      {"event": "eval", "t": 35.5, "step": 5, "seconds": 0.5, "eval_loss": 1.0},
      {"event": "skipped", "t": 36.0, "step": 7},
      {"event": "progress", "t": 39.0, "step": 9, "steps": 4, "step_s": 4.0},
      {"event": "preempted", "t": 39.5, "step": 9},
      {"event": "exit", "t": 40.0, "step": 9, "status": "preempted"},
      # Start 2 at 50 s (a 10 s gap), killed: resumes 9, steps 11-14 in 4 s, then dies.
      {"event": "start", "t": 50.0, "t_process": 50.0},
      {"event": "ready", "t": 55.0, "step": 9, "startup_s": 5.0},
      {"event": "first_step", "t": 60.0, "step": 10, "seconds": 5.0},
      {"event": "progress", "t": 64.0, "step": 14, "steps": 4, "step_s": 4.0},
      # Start 3 at 70 s: the newest checkpoint was 12, so steps 13-14 are done again.
      {"event": "start", "t": 70.0, "t_process": 70.0},
      {"event": "fallback", "t": 71.0, "step": 14},
      {"event": "ready", "t": 75.0, "step": 12, "startup_s": 5.0},
      {"event": "first_step", "t": 80.0, "step": 13, "seconds": 5.0},
      {"event": "progress", "t": 81.0, "step": 14, "steps": 1, "step_s": 1.0},
      {"event": "exit", "t": 100.0, "step": 14, "status": "done"},
  ])
  s = goodput.summarize(str(tmp_path))
  # Counted steps: 2-9 (8 s) + 11-12 (2 s) + 14 (1 s) = 11 steps in 11 s, less skipped step 7.
  assert s["steps"] == 11 and s["skipped_steps"] == 1
  assert s["skipped_s"] == pytest.approx(1.0)
  assert s["productive_s"] == pytest.approx(10.0)
  assert s["redone_s"] == pytest.approx(2.0)          # steps 13-14 of start 2
  assert s["compile_s"] == pytest.approx(30.0) and s["startup_s"] == pytest.approx(20.0)
  assert s["save_s"] == pytest.approx(1.0) and s["eval_s"] == pytest.approx(0.5)
  assert s["restart_gap_s"] == pytest.approx(10.0 + 6.0)   # 40 -> 50, 64 -> 70
  assert s["wall_s"] == pytest.approx(100.0) and s["goodput"] == pytest.approx(0.1)
  assert s["unaccounted_s"] == pytest.approx(100 - 10 - 2 - 30 - 20 - 1 - 0.5 - 16 - 1)
  assert (s["starts"], s["preemptions"], s["fallbacks"]) == (3, 1, 1)
  text = goodput.format_summary(s)
  assert json.loads(text.splitlines()[-1]) == s and "goodput 10.0%" in text


def test_an_interval_redone_twice_is_counted_once(tmp_path):
  _write(tmp_path, [
      {"event": "start", "t": 0.0},
      {"event": "ready", "t": 0.0, "step": 0, "startup_s": 0.0},
      {"event": "progress", "t": 4.0, "step": 4, "steps": 4, "step_s": 4.0},
      {"event": "start", "t": 5.0},
      {"event": "ready", "t": 5.0, "step": 2, "startup_s": 0.0},   # steps 3-4 again
      {"event": "start", "t": 6.0},
      {"event": "ready", "t": 6.0, "step": 1, "startup_s": 0.0},   # and step 2
      {"event": "start", "t": 7.0},
      {"event": "ready", "t": 7.0, "step": 1, "startup_s": 0.0},
      {"event": "exit", "t": 10.0},
  ])
  s = goodput.summarize(str(tmp_path))
  assert s["redone_s"] == pytest.approx(3.0) and s["productive_s"] == pytest.approx(1.0)
  assert s["steps"] == 1
