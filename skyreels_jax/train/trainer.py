"""The training loop: config -> mesh -> sharded state -> jitted step over grain batches, with
metrics and orbax checkpoints. Rerunning on the same workdir resumes from the newest checkpoint
that restores (state, EMA, optimizer, data position; train/resume.py); per-step randomness is
a function of the step, so a resumed run reaches the same parameters as an uninterrupted one.

Faults, and what the loop does (README, "Runs that survive"):
- SIGTERM / SIGINT: the step in flight finishes, every process saves that step (blocking) and
  the run returns `preempted` (train/preemption.py; the CLI exits EXIT_PREEMPTED).
- a non-finite step is not applied (train/state.py); `max_skipped_steps` in a row halt the run
  (RunHalted). The guard counters are read one step behind, so the host never stalls the device.
- no checkpoint is written holding a non-finite value (one on-device reduction before a save).
Everything that happens is a line of WORKDIR/events.jsonl (train/events.py, tools/goodput.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from skyreels_jax.config import ConfigError, count_params, derive, hybrid_mesh_shape, validate
from skyreels_jax.data import latents
from skyreels_jax.data.loader import iterator_stats, make_eval_datasets, make_iterator
from skyreels_jax.data.prefetch import DevicePrefetch
from skyreels_jax.parallel import multihost
from skyreels_jax.parallel.mesh import (batch_sharding, data_parallel_size, make_mesh, rules,
                                        state_shardings)
from skyreels_jax.perf import throughput
from skyreels_jax.tasks.examples import input_shapes, make_codecs, text_trainable
from skyreels_jax.train import init as init_lib
from skyreels_jax.train import resume
from skyreels_jax.train.checkpoint import Checkpointer
from skyreels_jax.train.evaluate import Evaluator
from skyreels_jax.train.samples import TrainingSamples
from skyreels_jax.train.events import EventLog
from skyreels_jax.train.metrics import MetricsWriter
from skyreels_jax.train.preemption import PreemptionWatch
from skyreels_jax.train.state import (LORA_BASE, LOSS_T_COUNT, LOSS_T_SUM, abstract_state,
                                      all_finite, create_state,
                                      jit_train_step, lora_on, lora_scale, make_loss_fn,
                                      make_optimizer,
                                      make_train_step, place_frozen, with_empty_latents)
from skyreels_jax.weights.trees import with_shardings

# Guard counters: not metrics to average or plot per step, read one step behind instead.
_GUARD_KEYS = ("skipped_steps", "consecutive_skips")


class RunHalted(RuntimeError):
  """The run cannot go on without a person: diverged, or a state that is not finite."""


def describe(config, mesh, params) -> str:
  """Start-up summary: mesh, parameter count, sharding of each parameter group."""
  _, dcn = hybrid_mesh_shape(config.mesh, mesh.devices.size)
  slices = {a: n for a, n in dcn.items() if n > 1}
  lines = [f"mesh: {dict(mesh.shape)} over {mesh.devices.size} devices "
           f"({jax.process_count()} processes)"
           + (f", slices over DCN {slices}" if slices else ""),
           f"params: {count_params(params) / 1e6:.2f}M"]
  groups: dict[str, set] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    key = "/".join(str(getattr(p, "key", p)) for p in path[:2])
    groups.setdefault(key, set()).add(str(getattr(leaf, "sharding", None).spec
                                          if hasattr(leaf, "sharding") else "?"))
  for k in sorted(groups):
    lines.append(f"  {k}: {', '.join(sorted(groups[k]))}")
  return "\n".join(lines)


def _global_batch(batch: dict, mesh, axis_rules) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, axis_rules), v)
          for k, v in batch.items()}


def _print(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


def _sync_log_step(iterator, shares: int, time_due: bool) -> tuple[int, bool]:
  """(bad records skipped so far by all processes, does any process want a timed save?). A
  collective on several processes: every process calls it on the same (log) steps, which is
  also how they agree on wall-clock saves. Processes that read the same share (`shares` <
  process count) count its bad records once."""
  count = iterator_stats(iterator)["bad_records"]
  if jax.process_count() == 1:
    return count, time_due
  rows = multihost_utils.process_allgather(np.asarray([count, int(time_due)], np.int64))
  rows = np.asarray(rows).reshape(jax.process_count(), 2)
  return int(rows[:, 0].sum()) * shares // jax.process_count(), bool(rows[:, 1].any())


class _Loop:
  """The state of one run of the loop that its helpers share: saves, the one-behind guard
  check and the event log."""

  def __init__(self, config, ckpt, iterator, events, meta, finite_fn):
    self.config, self.ckpt, self.iterator, self.events = config, ckpt, iterator, events
    self.meta, self.finite_fn = meta, finite_fn
    self.last_saved, self.last_save_time, self.blocked_s = -1, time.time(), 0.0
    self.pending = None   # (step, guard metrics on device) of the step before the current
    self.evaluator = self.samples = self.lora_base = None

  def sample(self, step: int, state, writer) -> None:
    """Samples of the EMA weights (train/samples.py); their time is not train time."""
    t = time.time()
    ema = state["ema"] if self.lora_base is None else (self.lora_base, state["ema"])
    folder = self.samples(step, ema, writer.tensorboard)
    seconds = time.time() - t
    self.blocked_s += seconds
    self.events.log("samples", step=step, seconds=round(seconds, 4), folder=folder)

  def evaluate(self, step: int, state, writer) -> None:
    """Validation (train/evaluate.py) of the params after `step`; its time is not train
    time (counted like a blocking save)."""
    t = time.time()
    metrics = self.evaluator(state["params"])
    seconds = time.time() - t
    self.blocked_s += seconds
    writer.write(step, {**metrics, "eval_s": seconds}, group="eval",
                 shown=("eval_loss", "eval_loss_video", "eval_loss_audio", "eval_s"))
    self.events.log("eval", step=step, seconds=round(seconds, 4),
                    eval_loss=float(metrics["eval_loss"]))

  def save(self, step: int, state, reason: str, *, block: bool = False) -> None:
    if step == self.last_saved:
      return
    t = time.time()
    if not bool(jax.device_get(self.finite_fn(state))):   # one scalar off the device
      raise RunHalted(f"the train state holds non-finite values at step {step}; not saved "
                      f"(newest checkpoint: {self.ckpt.latest_step()})")
    self.ckpt.save(step, state, self.iterator, {**self.meta, "step": step})
    if block:
      self.ckpt.wait()
    blocked = time.time() - t
    self.blocked_s += blocked
    self.last_saved, self.last_save_time = step, time.time()
    self.events.log("save", step=step, blocked_s=round(blocked, 4), reason=reason)

  def check_pending(self) -> None:
    """Reads the previous step's guard counters (by now its device work is done or next)."""
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    got = jax.device_get(metrics)
    consecutive = int(got["consecutive_skips"])
    if consecutive:
      self.events.log("skipped", step=step, loss=float(got["loss"]),
                      grad_norm=float(got["grad_norm"]),
                      skipped_steps=int(got["skipped_steps"]))
      logging.warning("step %d skipped: loss %s, grad norm %s", step, got["loss"],
                      got["grad_norm"])
    limit = self.config.train.max_skipped_steps
    if consecutive >= limit:
      why = "not finite" + (" or loss spikes" if self.config.train.loss_spike_factor else "")
      raise RunHalted(f"{consecutive} consecutive steps were {why} (steps "
                      f"{step - consecutive + 1}-{step}; train.max_skipped_steps={limit}): "
                      f"the run stopped at step {step}; newest checkpoint: "
                      f"{self.ckpt.latest_step()}")


def train(config, workdir: str, *, restore_step: int | None = None,
          started_at: float | None = None) -> dict[str, Any]:
  """Trains until `config.train.steps`; returns the last logged metrics, with `preempted`
  set when a signal stopped the run (its step saved). `restore_step` overrides
  config.train.restore_step."""
  started_at = started_at or time.time()
  validate(config)
  init_lib.check(config, workdir)   # a run that has no checkpoint yet starts from this
  _, mcfg = derive(config)
  mesh = make_mesh(config.mesh)
  axis_rules = rules(config)
  dp = data_parallel_size(mesh, axis_rules)
  if config.data.batch_size % dp:
    raise ConfigError("data.batch_size", f"{config.data.batch_size} does not divide over "
                      f"{dp} data-parallel shards of mesh {dict(mesh.shape)}")
  os.makedirs(workdir, exist_ok=True)
  events = EventLog(workdir)
  events.log("start", t_process=started_at, processes=jax.process_count())
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  tx = make_optimizer(config)
  on_latents = config.data.format == "latents"
  # On latents a frozen text encoder already ran (encode_latents): its weights stay unread.
  codecs, tokenizer = make_codecs(config, text_encoder=not on_latents)
  text_frozen = not text_trainable(config)
  # Each process reads only the rows of the global batch its devices hold.
  share, shares = multihost.data_shard(batch_sharding(mesh, 1, axis_rules),
                                       config.data.batch_size)
  latent_kw = {}
  if on_latents:
    latent_kw = dict(encoders=latents.encoder_identity(config, text_frozen=text_frozen),
                     video_latent_shape=codecs.latent_shape, text_frozen=text_frozen)
    if text_frozen:
      codecs = dataclasses.replace(codecs, null_text=latents.read_null_text(config.data.path))
  # Batch n + 1 goes to the devices while step n runs; checkpoints keep the position before
  # it (data/prefetch.py).
  iterator = DevicePrefetch(
      make_iterator(config.data, tokenizer=tokenizer, global_batch_size=config.data.batch_size,
                    seed=config.seed, process_index=share, process_count=shares, **latent_kw),
      lambda batch: _global_batch(batch, mesh, axis_rules))
  ckpt = Checkpointer(workdir, max_to_keep=config.train.max_to_keep,
                      async_save=config.train.async_checkpointing, owner=True)
  watch = PreemptionWatch()
  writer = None
  try:
    graphdef, abstract = abstract_state(config, tx)
    shardings = state_shardings(abstract, mesh, axis_rules)
    start, state = resume.restore(
        ckpt, with_shardings(abstract, shardings), iterator,
        restore_step=config.train.restore_step if restore_step is None else restore_step,
        data_shares=shares, events=events, say=_print)
    fresh = state is None
    if fresh:
      graphdef, state, shardings = create_state(config, tx, mesh, axis_rules)
      start = 0
      if config.train.init_from and not lora_on(config):
        state, _ = init_lib.initialize(config, state, mesh, axis_rules, workdir, say=_print)
    else:
      _print(f"resuming from checkpoint step {start}")
    summary = describe(config, mesh, state["params"]).splitlines()
    _print("\n".join(summary[:2]))        # mesh and size; each group's sharding to the log
    logging.info("parameter shardings:\n%s", "\n".join(summary[2:]))

    train_step = make_train_step(config, graphdef, codecs, tx, mcfg.use_audio)
    frozen, frozen_sharding = place_frozen(codecs, mesh, axis_rules)
    lora_base = {}   # a LoRA run's frozen base rides with the frozen encoders' weights
    if lora_on(config):
      base, base_sharding = init_lib.load_lora_base(config, mesh, axis_rules, workdir,
                                                    fresh=fresh, say=_print)
      lora_base = {LORA_BASE: (base, base_sharding)}
    jitted: dict[tuple, Any] = {}
    frozen_by_shape: dict[tuple, Any] = {}

    def frozen_args(batch):
      """(frozen weights + this shape's empty condition latents (+ a LoRA base), their
      shardings): what the step and the evaluation take beside the batch."""
      key = tuple(sorted((k, v.shape) for k, v in batch.items()))
      if key not in frozen_by_shape:
        args, args_sharding = with_empty_latents(config, codecs, batch, frozen,
                                                 frozen_sharding, mesh, mcfg.use_audio)
        for k, (tree, sharding) in lora_base.items():
          args, args_sharding = {**args, k: tree}, {**args_sharding, k: sharding}
        frozen_by_shape[key] = args, args_sharding
      return frozen_by_shape[key]

    def step_fn(state, batch):
      """One jitted step (and one set of empty condition latents) per batch shape: a bucket
      compiles once. `batch`: global arrays, already on the devices (DevicePrefetch)."""
      key = tuple(sorted((k, v.shape) for k, v in batch.items()))
      if key not in jitted:
        args, args_sharding = frozen_args(batch)
        # Tokens and analytic FLOPs of the GLOBAL batch (perf/throughput.py).
        whole = {k: jax.ShapeDtypeStruct((config.data.batch_size,) + v.shape[1:], v.dtype)
                 for k, v in batch.items()}
        cost = throughput.step_cost(mcfg, input_shapes(config, codecs, whole, frozen,
                                                       mcfg.use_audio))
        jitted[key] = args, jit_train_step(train_step, shardings, {
            k: batch_sharding(mesh, v.ndim, axis_rules) for k, v in batch.items()},
            args_sharding), cost
      args, fn, cost = jitted[key]
      return (*fn(state, batch, args), cost)

    evaluator = None
    if config.train.eval_every:
      try:
        eval_sets = make_eval_datasets(
            config.data, tokenizer=tokenizer, global_batch_size=config.data.batch_size,
            seed=config.seed, process_index=share, process_count=shares,
            max_batches=config.train.eval_batches, **latent_kw)
      except ValueError as e:
        raise ConfigError("data.eval_path" if config.data.eval_path else "data.eval_fraction",
                          str(e)) from None
      evaluator = Evaluator(
          config, make_loss_fn(config, graphdef, codecs, mcfg.use_audio), eval_sets,
          frozen_args, lambda b: _global_batch(b, mesh, axis_rules), shardings["params"],
          mesh, axis_rules)
    samples = None
    if config.train.sample_every:
      sample_codecs, sample_frozen = codecs, frozen
      if codecs.text_encoder is None and text_frozen:   # on latents: load it to sample
        sample_codecs, _ = make_codecs(config)
        sample_frozen, _ = place_frozen(sample_codecs, mesh, axis_rules)
      samples = TrainingSamples(config, workdir, mesh=mesh, codecs=sample_codecs,
                                tokenizer=tokenizer, frozen=sample_frozen,
                                lora_scale=lora_scale(config) if lora_on(config) else None)
    writer = MetricsWriter(workdir, resume_step=start, config=config)
    meta = {"config": json.loads(config.to_json_best_effort()),
            "model": mcfg.__class__.__name__, "data_shares": shares,
            "process_count": jax.process_count()}
    loop = _Loop(config, ckpt, iterator, events, meta,
                 jax.jit(all_finite, in_shardings=(shardings,)))
    loop.evaluator, loop.samples = evaluator, samples
    loop.lora_base = lora_base[LORA_BASE][0] if lora_base else None
    result = _run(config, mesh, state, step_fn, loop, watch, writer, start, shares,
                  started_at)
    ckpt.wait()
    return result
  except BaseException as e:
    if not isinstance(e, (resume.ResumeError, ConfigError)):
      events.log("exit", status="halted" if isinstance(e, RunHalted) else "error",
                 reason=resume.first_line(e))
    raise
  finally:
    watch.close()
    ckpt.close()
    if writer is not None:
      writer.close()
    close = getattr(iterator, "close", None)
    if close:
      close()


class _Rate:
  """What one log interval did: throughput (perf/throughput.py: model tokens and analytic
  FLOPs of the steps dispatched, over the interval's time less saves, evaluation and
  samples), the time the loop waited for the next batch (mean per step), and the loss by
  timestep quartile over the interval's steps."""

  def __init__(self, device_kind: str, num_devices: int):
    self.peak = throughput.peak_flops(device_kind)
    self.num_devices = num_devices
    self.reset(0.0)

  def reset(self, blocked_s: float) -> None:
    self.tokens = self.flops = self.steps = 0
    self.wait_s, self.blocked_at = 0.0, blocked_s
    self.loss_t = None   # on device: (sums, counts) by timestep quartile

  def waited(self, seconds: float) -> None:
    self.wait_s += seconds

  def stepped(self, cost: dict, loss_t_sum, loss_t_count) -> None:
    self.tokens += cost["tokens"]
    self.flops += cost["flops"]
    self.steps += 1
    # Added up on the device (no host sync per step; a skipped step's are zeros already).
    add = (loss_t_sum, loss_t_count)
    self.loss_t = add if self.loss_t is None else jax.tree.map(jnp.add, self.loss_t, add)

  def report(self, seconds: float) -> dict:
    seconds = max(seconds, 1e-9)
    per_device = self.flops / seconds / self.num_devices
    out = {"tokens_per_sec": self.tokens / seconds, "tflops_per_device": per_device / 1e12,
           "data_wait_s": self.wait_s / max(self.steps, 1)}
    if self.peak:
      out["mfu"] = per_device / self.peak
    if self.loss_t is not None:
      sums, counts = jax.device_get(self.loss_t)
      for q in range(4):   # an empty quartile: nothing to report (null in metrics.jsonl)
        out[f"loss_t{q}"] = sums[q] / counts[q] if counts[q] else None
    return out


def one_step_in_flight(mesh) -> bool:
  """True on several CPU devices: each step finishes before the next is dispatched. XLA's CPU
  runtime deadlocks when executions of one multi-device program queue up (seen with 100
  dispatched steps, every attention strategy: "Termination timeout for collective ..."; 1 in
  flight never did). Accelerators keep asynchronous dispatch."""
  return mesh.devices.flat[0].platform == "cpu" and mesh.devices.size > 1


def _run(config, mesh, state, step_fn, loop: _Loop, watch: PreemptionWatch, writer: MetricsWriter,
         start: int, shares: int, started_at: float) -> dict[str, Any]:
  """Steps `start`..train.steps; returns the last logged metrics (+ `preempted`)."""
  t = config.train
  total, events = t.steps, loop.events
  last: dict[str, Any] = {}
  events.log("ready", step=start, startup_s=round(time.time() - started_at, 4))
  # steps_per_sec: since the last log (the first interval includes the compile); progress
  # events (goodput): step time only, the first step and saves left out.
  t_ready = t_rate = t_acc = time.time()
  rate_steps, blocked_acc, interval_from = 0, 0.0, start + 1
  rate = _Rate(mesh.devices.flat[0].device_kind, mesh.devices.size)
  # One progress bar (steps, ETA) on a terminal, process 0; off in logs and pipes.
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             disable=None if jax.process_index() == 0 else True)
  writer.bar = bar
  first_profiled, last_profiled = tuple(config.train.profile_steps)
  profiling = False
  serial = one_step_in_flight(mesh)
  with jax.set_mesh(mesh):
    for step in range(start, total):
      if step + 1 == first_profiled and jax.process_index() == 0:
        # A jax.profiler trace of steps a..b (TensorBoard's profile plugin, Perfetto).
        jax.profiler.start_trace(os.path.join(loop.ckpt.workdir, "profile"))
        profiling = True
      t_wait = time.time()
      batch = next(loop.iterator)
      rate.waited(time.time() - t_wait)
      state, metrics, cost = step_fn(state, batch)
      if serial:
        jax.block_until_ready((state, metrics))
      rate.stepped(cost, metrics.pop(LOSS_T_SUM), metrics.pop(LOSS_T_COUNT))
      bar.update(1)
      done = step + 1
      loop.check_pending()
      loop.pending = (done, {k: metrics[k] for k in ("loss", "grad_norm", *_GUARD_KEYS)})
      rate_steps += 1
      if done == start + 1:   # the first step of this start pays for the compile
        jax.block_until_ready(metrics)
        t_acc, blocked_acc, interval_from = time.time(), loop.blocked_s, done + 1
        events.log("first_step", step=done, seconds=round(t_acc - t_ready, 4))
      if profiling and done >= last_profiled:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profiling = False
        events.log("profile", step=done, first=first_profiled, last=last_profiled)
      preempted = watch.reached(done)
      due = (t.checkpoint_every_secs > 0
             and time.time() - loop.last_save_time >= t.checkpoint_every_secs)
      if done % t.log_every == 0 or done == total:
        got = jax.device_get(metrics)
        now = time.time()
        bad, due = _sync_log_step(loop.iterator, shares, due)
        last = {**{k: float(np.asarray(v)) for k, v in got.items() if k not in _GUARD_KEYS},
                "skipped_steps": int(got["skipped_steps"]),
                "steps_per_sec": rate_steps / max(now - t_rate, 1e-9), "bad_records": bad,
                **rate.report(now - t_rate - (loop.blocked_s - rate.blocked_at))}
        rate.reset(loop.blocked_s)
        writer.write(done, last)
        if done >= interval_from:
          events.log("progress", step=done, steps=done - interval_from + 1,
                     step_s=round(now - t_acc - (loop.blocked_s - blocked_acc), 4))
        t_rate, rate_steps = now, 0
        t_acc, blocked_acc, interval_from = now, loop.blocked_s, done + 1
      elif jax.process_count() > 1:
        due = False   # processes agree on timed saves at log steps only
      if loop.evaluator is not None and not preempted and (done % t.eval_every == 0
                                                         or done == total):
        loop.evaluate(done, state, writer)
      if loop.samples is not None and not preempted and (done % t.sample_every == 0
                                                         or done == total):
        loop.sample(done, state, writer)
      if preempted:
        loop.check_pending()
        watch.arm_second_signal()
        loop.save(done, state, "preemption", block=True)
        events.log("preempted", step=done, signal=watch.signal)
        events.log("exit", step=done, status="preempted")
        bar.close()
        return {"step": done, **last, "preempted": True}
      reason = ("final" if done == total else "interval" if done % t.checkpoint_every == 0
                else "time" if due else None)
      if reason:
        loop.check_pending()   # never save past a run of skips that should halt
        loop.save(done, state, reason)
  loop.check_pending()
  bar.close()
  events.log("exit", step=total, status="done")
  return {"step": total, **last, "preempted": False}
