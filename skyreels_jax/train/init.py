"""train.init_from: a new run starts from another run's weights (SPEC sections 4-5: each
curriculum stage from the previous one, the refiner from the video model, SFT from the joint
stage).

The source is a run directory (its newest checkpoint, or train.init_step; the EMA weights,
or train.init_weights=params), or a converted HunyuanVideo transformer (python -m
skyreels_jax.tools.convert --kind=hunyuan_video: the video branch; the audio branch and the
V4 layers keep their initialisation). Parameters are matched by name and shape (weights/match.py):
those that match are loaded, those the source lacks keep their initialisation, anything
else is an error naming the tensors unless train.init_ignore lists it. The run itself starts
at step 0 with a fresh optimizer, schedule and data iterator; the report goes to
WORKDIR/init_report.json. Initialisation happens only when the run has no checkpoint of its
own: a resumed run restores its own state, never the source again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.config import DTYPES, ConfigError, abstract_model, load_run_config
from skyreels_jax.models.mappings import hunyuan
from skyreels_jax.parallel.mesh import state_shardings
from skyreels_jax.train.state import lora_on
from skyreels_jax.weights import converted, lora, match, runs
from skyreels_jax.weights.trees import summary, with_shardings

REPORT = runs.INIT_REPORT
CONVERTED_KIND = "hunyuan_video"     # the converted folders a run starts from
WEIGHTS = ("ema", "params")


def check(config, workdir: str | None = None) -> None:
  """train.init_*: the source exists and is a training run; ConfigError naming the field.
  Reads the source's config.json, no weights. Nothing to check when `workdir` already has a
  checkpoint: the run resumes from its own."""
  t = config.train
  if not t.init_from or (workdir and runs.has_checkpoint(workdir)):
    return
  path = t.init_from
  if not os.path.isdir(path):
    raise ConfigError("train.init_from", f"{path}: no such directory")
  if os.path.isfile(os.path.join(path, converted.META)):
    if lora_on(config):
      raise ConfigError("train.init_from", f"{path}: a LoRA run adapts a training run (a "
                        "converted folder: start a full run from it first)")
    try:
      converted.read_meta(path, CONVERTED_KIND)
    except ValueError as e:
      raise ConfigError("train.init_from", str(e)) from None
  elif not os.path.isfile(os.path.join(path, "config.json")):
    raise ConfigError("train.init_from", f"{path}: neither a training run (config.json, "
                      f"checkpoints/) nor a converted folder ({converted.META})")


def _read_converted(config, mesh, axis_rules) -> tuple[int, dict[str, Any]]:
  """A `tools.convert --kind=hunyuan_video` folder: the video branch, named as our model's
  (`mmdit/...`), each array read straight into its sharding; what the folder left out is
  not a source."""
  path = config.train.init_from
  meta = converted.read_meta(path, CONVERTED_KIND)
  abstract = nnx.eval_shape(lambda: hunyuan.build_module(meta["module_config"]))
  shardings = match.flat(state_shardings(nnx.state(abstract), mesh, axis_rules))
  place = lambda target: jax.tree_util.tree_map_with_path(
      lambda p, _: shardings[match.name(p)], target)
  module = converted.restore(path, CONVERTED_KIND, hunyuan.build_module, place)
  left_out = set(meta["module_config"].get("left_out", ()))
  return 0, {f"mmdit/{n}": v for n, v in match.flat(nnx.state(module)).items()
             if n not in left_out}


def _read_run(config, mesh, axis_rules) -> tuple[int, dict[str, Any]]:
  t = config.train
  try:
    source_config = load_run_config(t.init_from)
    _, abstract = nnx.split(abstract_model(source_config), nnx.Param)
  except (ValueError, KeyError) as e:
    raise ConfigError("train.init_from", f"{t.init_from}: its config.json does not build a "
                      f"model: {e}") from None
  target = with_shardings(abstract, state_shardings(abstract, mesh, axis_rules))
  step = None if t.init_step < 0 else int(t.init_step)
  try:
    step, tree = runs.read(t.init_from, t.init_weights, target, step=step)
  except FileNotFoundError as e:
    raise ConfigError("train.init_from", f"{t.init_from}: {e}") from None
  except (ValueError, KeyError) as e:   # orbax: no such step
    raise ConfigError("train.init_step", f"{t.init_from}: step {t.init_step}: "
                      f"{str(e).splitlines()[0]}") from None
  return step, match.flat(tree)


def initialize(config, state: dict, mesh, axis_rules, workdir: str,
               say=print) -> tuple[dict, match.Report]:
  """`state` (freshly created, step 0) with params and EMA loaded from train.init_from."""
  t = config.train
  check(config)
  if os.path.isfile(os.path.join(t.init_from, converted.META)):
    step, source = _read_converted(config, mesh, axis_rules)
  else:
    step, source = _read_run(config, mesh, axis_rules)
  target = match.flat(state["params"])
  try:
    values, report = match.match(target, source, tuple(t.init_ignore))
  except match.MatchError as e:
    raise ConfigError("train.init_from", f"{t.init_from}: {e}") from None
  values = {n: jax.device_put(v.astype(target[n].dtype), target[n].sharding)
            for n, v in values.items()}
  params = match.replace(state["params"], values)
  state = {**state, "params": params, "ema": jax.tree.map(jnp.copy, params)}
  say(f"initialised from {t.init_from} (step {step}, {t.init_weights}): {report.summary()}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, REPORT), "w") as f:
      json.dump({"source": os.path.abspath(t.init_from), "step": step,
                 "weights": t.init_weights, **report.to_json()}, f, indent=2)
  return state, report


def lora_base_target(config, mesh, axis_rules) -> tuple[Any, Any]:
  """(abstract base params in train.lora.base_dtype with their shardings, the shardings)."""
  _, params = nnx.split(abstract_model(config), nnx.Param)
  typed = lora.typed(params, DTYPES[config.train.lora.base_dtype])
  shardings = state_shardings(typed, mesh, axis_rules)
  return with_shardings(typed, shardings), shardings


def load_lora_base(config, mesh, axis_rules, workdir: str, *, fresh: bool,
                   say=print) -> tuple[Any, Any]:
  """(a LoRA run's frozen base on the mesh, its shardings). A fresh run reads
  train.init_from (every weight must load: a base has no new ones) and records it in
  init_report.json; a resumed one, and the sampler, read what the report recorded."""
  t = config.train
  target, shardings = lora_base_target(config, mesh, axis_rules)
  if not fresh:
    try:
      base = runs.read_base(workdir, target)
    except FileNotFoundError as e:
      raise ConfigError("train.init_from", str(e)) from None
    say(f"LoRA base re-read from {workdir}/{REPORT}: {summary(base)}")
    return base, shardings
  check(config)
  step = None if t.init_step < 0 else int(t.init_step)
  try:
    step, base = runs.read(t.init_from, t.init_weights, target, step=step)
  except FileNotFoundError as e:
    raise ConfigError("train.init_from", f"{t.init_from}: {e}") from None
  except (ValueError, KeyError) as e:   # another model, or no such step
    raise ConfigError("train.init_from", f"{t.init_from} is not a base of this model "
                      f"(step {t.init_step}): {str(e).splitlines()[0]}") from None
  names = sorted(match.flat(base))
  adapted = ["/".join(map(str, p)) for p in lora.targets(base, t.lora.targets)]
  report = match.Report(loaded=names, new=[], ignored=[])
  say(f"LoRA base {t.init_from} (step {step}, {t.init_weights}, {t.lora.base_dtype}): "
      f"{summary(base)}; adapting {len(adapted)} kernels at rank {t.lora.rank}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, REPORT), "w") as f:
      json.dump({"source": os.path.abspath(t.init_from), "step": step,
                 "weights": t.init_weights, **report.to_json(),
                 "lora": {"rank": t.lora.rank, "alpha": t.lora.alpha,
                          "targets": list(t.lora.targets), "adapted": adapted}}, f, indent=2)
  return base, shardings
