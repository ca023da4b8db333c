"""The training loop: config -> mesh -> sharded state -> jitted step over grain batches, with
metrics and orbax checkpoints. Rerunning on the same workdir resumes from the latest
checkpoint (state, EMA, optimizer, data position); per-step randomness is a function of the
step, so a resumed run reaches the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from skyreels_jax.config import ConfigError, count_params, derive, hybrid_mesh_shape, validate
from skyreels_jax.data import latents
from skyreels_jax.data.loader import iterator_stats, make_iterator
from skyreels_jax.parallel import multihost
from skyreels_jax.parallel.mesh import (batch_sharding, data_parallel_size, make_mesh, rules,
                                        state_shardings)
from skyreels_jax.tasks.examples import make_codecs, text_trainable
from skyreels_jax.train.checkpoint import Checkpointer, with_shardings
from skyreels_jax.train.metrics import MetricsWriter
from skyreels_jax.train.state import (abstract_state, create_state, jit_train_step,
                                      make_optimizer, make_train_step, place_frozen)


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


def _total_bad_records(iterator, shares: int) -> int:
  """Bad records skipped so far by all processes (a collective: every process calls it).
  Processes that read the same share (`shares` < process count) count it once."""
  count = iterator_stats(iterator)["bad_records"]
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  counts = multihost_utils.process_allgather(np.int32(count))
  return int(np.sum(counts)) * shares // jax.process_count()


def train(config, workdir: str) -> dict[str, Any]:
  """Trains until `config.train.steps`; returns the last logged metrics."""
  validate(config)
  _, mcfg = derive(config)
  mesh = make_mesh(config.mesh)
  axis_rules = rules(config)
  dp = data_parallel_size(mesh, axis_rules)
  if config.data.batch_size % dp:
    raise ConfigError("data.batch_size", f"{config.data.batch_size} does not divide over "
                      f"{dp} data-parallel shards of mesh {dict(mesh.shape)}")
  os.makedirs(workdir, exist_ok=True)
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
  iterator = make_iterator(config.data, tokenizer=tokenizer,
                           global_batch_size=config.data.batch_size, seed=config.seed,
                           process_index=share, process_count=shares, **latent_kw)
  ckpt = Checkpointer(workdir, max_to_keep=config.train.max_to_keep,
                      async_save=config.train.async_checkpointing)
  start = ckpt.latest_step()
  if start is None:
    graphdef, state, shardings = create_state(config, tx, mesh, axis_rules)
    start = 0
  else:
    graphdef, abstract = abstract_state(config, tx)
    shardings = state_shardings(abstract, mesh, axis_rules)
    state = ckpt.restore(start, with_shardings(abstract, shardings), iterator)
    logging.info("resumed from step %d", start)
    _print(f"resuming from checkpoint step {start}")
  _print(describe(config, mesh, state["params"]))

  train_step = make_train_step(config, graphdef, codecs, tx, mcfg.use_audio)
  frozen, frozen_sharding = place_frozen(codecs, mesh, axis_rules)
  jitted: dict[tuple, Any] = {}

  def step_fn(state, batch):
    """One jitted step per batch structure (image batches have no audio field); jit
    compiles once per bucket shape within it."""
    key = tuple(sorted((k, v.ndim) for k, v in batch.items()))
    if key not in jitted:
      jitted[key] = jit_train_step(train_step, shardings, {
          k: batch_sharding(mesh, v.ndim, axis_rules) for k, v in batch.items()},
          frozen_sharding)
    return jitted[key](state, _global_batch(batch, mesh, axis_rules), frozen)

  first = next(iterator)
  writer = MetricsWriter(workdir, resume_step=start)
  meta = {"config": json.loads(config.to_json_best_effort()), "model": mcfg.__class__.__name__}

  last: dict[str, Any] = {}
  total = config.train.steps
  t_last, steps_since = time.time(), 0
  batch = first
  try:
    with jax.set_mesh(mesh):
      for step in range(start, total):
        if batch is None:
          batch = next(iterator)
        state, metrics = step_fn(state, batch)
        batch = None
        steps_since += 1
        done = step + 1
        if done % config.train.log_every == 0 or done == total:
          metrics = jax.device_get(metrics)
          now = time.time()
          last = {**{k: float(np.asarray(v)) for k, v in metrics.items()},
                  "steps_per_sec": steps_since / max(now - t_last, 1e-9),
                  "bad_records": _total_bad_records(iterator, shares)}
          if not np.isfinite(last["loss"]):
            raise FloatingPointError(f"loss is {last['loss']} at step {done}")
          writer.write(done, last)
          t_last, steps_since = now, 0
        if done % config.train.checkpoint_every == 0 or done == total:
          ckpt.save(done, state, iterator, {**meta, "step": done})
    ckpt.wait()
  finally:
    ckpt.close()
    writer.close()
    close = getattr(iterator, "close", None)
    if close:
      close()
  return {"step": total, **last}
