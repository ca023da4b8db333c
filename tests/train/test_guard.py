"""Non-finite steps: not applied (state bit for bit), counted, and a run of them halts."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import restore_train_state, small_run_config
from skyreels_jax.data.loader import make_iterator
from skyreels_jax.parallel.mesh import batch_sharding, make_mesh, rules
from skyreels_jax.tasks.examples import make_codecs
from skyreels_jax.train.events import EventLog, read_events
from skyreels_jax.train.metrics import MetricsWriter
from skyreels_jax.train.state import (all_finite, create_state, jit_train_step, make_optimizer,
                                      make_train_step, place_frozen, with_empty_latents)
from skyreels_jax.train.trainer import RunHalted, train

# One config for both tests (one compiled step): one skip, then two in a row.
GUARDED = {"train.fault_nonfinite_steps": (3, 5, 6), "train.max_skipped_steps": 2,
           "train.loss_spike_factor": 3.0, "train.steps": 8}


def _leaves(state):
  return [np.asarray(x) for k in ("params", "opt_state", "ema")
          for x in jax.tree.leaves(state[k])]


def test_a_non_finite_step_leaves_the_state_bit_identical(synthetic_data):
  config = small_run_config(synthetic_data, **GUARDED)
  mesh, axis_rules = make_mesh(config.mesh), rules(config)
  tx = make_optimizer(config)
  graphdef, state, shardings = create_state(config, tx, mesh, axis_rules)
  codecs, tokenizer = make_codecs(config)
  frozen, frozen_sharding = place_frozen(codecs, mesh, axis_rules)
  batch = next(make_iterator(config.data, tokenizer=tokenizer, global_batch_size=8, seed=0))
  # The trainer's program: frozen weights and precomputed empty latents as arguments.
  frozen, frozen_sharding = with_empty_latents(config, codecs, batch, frozen, frozen_sharding,
                                               mesh, True)
  batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim, axis_rules))
           for k, v in batch.items()}
  step = jit_train_step(make_train_step(config, graphdef, codecs, tx, True), shardings,
                        {k: batch_sharding(mesh, v.ndim, axis_rules) for k, v in batch.items()},
                        frozen_sharding)
  with jax.set_mesh(mesh):
    state, _ = step(state, batch, frozen)               # steps 1, 2: applied
    state, _ = step(state, batch, frozen)
    before = _leaves(state)
    state, m2 = step(state, batch, frozen)              # step 3: an infinite gradient
    after = _leaves(state)
    assert not np.isfinite(float(m2["grad_norm"]))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))   # bit for bit
    assert int(state["step"]) == 3 and int(m2["skipped_steps"]) == 1
    assert int(m2["consecutive_skips"]) == 1
    # The schedule follows applied updates: step 4 uses the lr step 3 would have used.
    state, m3 = step(state, batch, frozen)
    assert float(m3["lr"]) == pytest.approx(float(m2["lr"]))
    assert int(m3["skipped_steps"]) == 1 and int(m3["consecutive_skips"]) == 0
    assert not all(np.array_equal(a, b) for a, b in zip(after, _leaves(state)))   # applied
    # The loss-spike guard: a loss 3x above its running mean is skipped too.
    state["guard"]["loss_mean"] = jnp.float32(float(m3["loss"]) / 10)
    state["step"] = jnp.int32(6)                        # step 7: no injected fault
    before = _leaves(state)
    state, m4 = step(state, batch, frozen)
    assert np.isfinite(float(m4["loss"])) and int(m4["skipped_steps"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(state)))
    assert bool(all_finite(state))
    state["params"] = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state["params"])
    assert not bool(all_finite(state))


def test_skipped_steps_are_counted_and_a_run_of_them_halts(synthetic_data, tmp_path):
  config = small_run_config(synthetic_data, **GUARDED)
  workdir = str(tmp_path)
  with pytest.raises(RunHalted, match=r"2 consecutive steps were not finite or loss spikes "
                     r"\(steps 5-6; "
                     r"train.max_skipped_steps=2\): the run stopped at step 6"):
    train(config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 2, 3]
  events = read_events(workdir)
  assert [e["step"] for e in events if e["event"] == "skipped"] == [3, 5, 6]
  assert events[-1]["event"] == "exit" and events[-1]["status"] == "halted"
  # Never saved past the last good state, and what was saved is finite.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]
  state = restore_train_state(workdir, config, 4)
  assert bool(all_finite(state)) and int(state["guard"]["skipped"]) == 1


def test_logs_are_strict_json_with_non_finite_values_as_null(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(3, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5})
  writer.close()
  EventLog(str(tmp_path)).log("skipped", step=3, loss=float("nan"), grad_norm=2.0)
  strict = lambda line: json.loads(line, parse_constant=lambda c: pytest.fail(c))
  [row] = [strict(l) for l in open(tmp_path / "metrics.jsonl")]
  assert (row["loss"], row["grad_norm"], row["lr"]) == (None, None, 0.5)
  [event] = [strict(l) for l in open(tmp_path / "events.jsonl")]
  assert event["loss"] is None and event["grad_norm"] == 2.0


def test_the_console_leaves_out_empty_quartiles_but_shows_a_nan_loss(tmp_path, capsys):
  writer = MetricsWriter(str(tmp_path))
  writer.write(5, {"loss": 0.25, "loss_t0": 0.5, "loss_t3": None})   # no draws
  writer.write(6, {"loss": float("nan"), "loss_t0": 0.5})
  writer.close()
  out = capsys.readouterr().out
  assert "step 5: loss=0.25 loss_t0=0.5\n" in out and "loss_t3" not in out
  assert "step 6: loss=nan loss_t0=0.5" in out
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert "loss_t3" in rows[0] and rows[0]["loss_t3"] is None
