"""Train state, optimiser and the jitted train step.

The state is a plain dict pytree: {"step", "params", "opt_state", "ema", "guard"}; params
and EMA are nnx.State trees of the SkyReelsV4 module (fp32 master weights; the compute dtype is
the model config's). Per-step randomness is fold_in(seed key, step), so a resumed run draws the
same numbers as an uninterrupted one.

The guard: a step whose loss or gradient norm is not finite (or, with
train.loss_spike_factor > 0, whose loss exceeds that factor times its running mean) is not
applied. Params, optimizer state (Adam moments and its update count) and EMA stay bit-identical;
`step` still advances, so the data position and the per-step key move on and the bad batch is
not retried. The learning-rate schedule follows the optimizer's count of APPLIED updates
(step - skipped), so a skipped step does not eat into warmup.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from skyreels_jax.config import DTYPES, ConfigError, abstract_model, build_model
from skyreels_jax.diffusion.flow_matching import flow_matching_loss, model_guidance
from skyreels_jax.parallel.mesh import place_tree, state_shardings
from skyreels_jax.tasks.examples import (Codecs, compute_empty_latents, needed_empty_latents,
                                         training_inputs)
from skyreels_jax.weights import lora

# The frozen base of a LoRA run rides with the frozen encoders' weights (a jit argument).
LORA_BASE = "lora_base"
GUIDANCE_KEY = 0x6775    # fold_in of the step key for the embedded guidance scale


def lr_schedule(config) -> optax.Schedule:
  """Linear warmup, cosine decay to lr * min_lr_ratio over optim.decay_steps (0: the run's
  train.steps). Fix decay_steps to extend a run without changing its schedule."""
  o = config.optim
  horizon = o.decay_steps or config.train.steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=max(horizon, o.warmup_steps + 1), end_value=o.lr * o.min_lr_ratio)


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only, never on biases or norm scales."""
  def is_matrix(path, _):
    return str(getattr(path[-1], "key", path[-1])) in ("kernel", "embedding")
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip),
      optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  mask=_decay_mask))


def lora_on(config) -> bool:
  return config.train.lora.rank > 0


def lora_scale(config) -> float:
  return lora.scale(config.train.lora.rank, config.train.lora.alpha)


def abstract_params(config) -> tuple[nnx.GraphDef, nnx.State]:
  """The model's GraphDef and abstract params (every weight, the base of a LoRA run)."""
  return nnx.split(abstract_model(config), nnx.Param)


def abstract_state(config, tx) -> tuple[nnx.GraphDef, dict]:
  """GraphDef and the abstract state (leaves keep their logical-axis metadata). A LoRA run
  trains its adapters only: they are the state's params (weights/lora.py)."""
  graphdef, params = abstract_params(config)
  if lora_on(config):
    lo = config.train.lora
    params = lora.abstract_adapters(params, lo.targets, lo.rank,
                                    DTYPES[config.model.param_dtype])
    if not nnx.to_flat_state(params):
      raise ConfigError("train.lora.targets", f"{tuple(lo.targets)} match no kernel")
  opt_state = jax.eval_shape(tx.init, params)
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
           "opt_state": opt_state, "ema": params, "guard": jax.eval_shape(init_guard)}
  return graphdef, state


def init_guard() -> dict:
  """Counters of the non-finite / spike guard (in the state, so they survive a resume)."""
  return {"skipped": jnp.zeros((), jnp.int32), "consecutive": jnp.zeros((), jnp.int32),
          "loss_mean": jnp.zeros((), jnp.float32)}


def create_state(config, tx, mesh, axis_rules) -> tuple[nnx.GraphDef, dict, Any]:
  """Initialises the state directly in its sharded layout (never whole on one device)."""
  graphdef, abstract = abstract_state(config, tx)
  shardings = state_shardings(abstract, mesh, axis_rules)

  def init():
    if lora_on(config):
      params = lora.init_adapters(abstract["params"], jax.random.key(config.seed))
    else:
      params = nnx.state(build_model(config, rngs=nnx.Rngs(config.seed)), nnx.Param)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "ema": jax.tree.map(jnp.copy, params), "guard": init_guard()}

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, shardings


LOSS_T_SUM, LOSS_T_COUNT = "loss_t_sum", "loss_t_count"   # (4,) per step, by t quartile


def make_loss_fn(config, graphdef, codecs: Codecs, use_audio: bool) -> Callable:
  """loss_fn(params, batch, rng, frozen, at=None) -> (loss, {"loss_video", "loss_audio",
  ...}); `frozen`: the frozen components' weights (Codecs.frozen_params), no gradient; `at`:
  a validation point (tasks/examples.EvalPoint: fixed time and task)."""
  fcfg = config.flow

  def loss_fn(params, batch, rng, frozen, at=None):
    frozen = dict(frozen)
    base = frozen.pop(LORA_BASE, None)
    if base is not None:     # a LoRA run: params are the adapters, folded into the base
      params = lora.merge(base, params, lora_scale(config))
    model = nnx.merge(graphdef, params)
    inputs, terms = training_inputs(batch, rng, config=config, codecs=codecs.bind(frozen),
                                    use_audio=use_audio, at=at)
    if config.model.guidance_embed:   # a key of its own: the other draws stay as they were
      lo, hi = config.flow.embedded_guidance
      scale = jax.random.uniform(jax.random.fold_in(rng, GUIDANCE_KEY),
                                 (inputs["video"].shape[0],), minval=lo, maxval=hi)
      inputs["guidance"] = model_guidance(scale)
    v_pred, a_pred, *k_pred = model(**inputs)
    keyframes = {}
    # The cascade base's generated keyframes carry a loss (tasks/keyframes.py); the
    # refiner's are given (no keyframe_z0) and carry none.
    if k_pred and "keyframe_z0" in terms:
      keyframes = dict(keyframe_pred=k_pred[0], keyframe_z0=terms["keyframe_z0"],
                       keyframe_eps=terms["keyframe_eps"], keyframe_keep=terms["keyframe_keep"],
                       keyframe_weight=config.keyframes.loss_weight)
    loss, parts = flow_matching_loss(
        video_pred=v_pred, video_z0=terms["video_z0"], video_eps=terms["video_eps"],
        video_keep=terms["video_keep"], audio_pred=a_pred, audio_z0=terms["audio_z0"],
        audio_eps=terms["audio_eps"], audio_keep=terms["audio_keep"],
        video_weight=fcfg.video_loss_weight, audio_weight=fcfg.audio_loss_weight,
        return_per_example=True, t=terms["t"], video_prediction=fcfg.video_prediction,
        audio_prediction=fcfg.audio_prediction, **keyframes)
    if "task_fallbacks" in terms:   # data-given tasks whose record lacked a field
      parts = dict(parts, task_fallbacks=terms["task_fallbacks"])
    # The loss by timestep quartile (t in [q/4, (q+1)/4)): sums and counts, which the loop
    # adds up over a log interval (loss_t0 .. loss_t3: where a run is stuck).
    per_example = parts.pop("per_example")
    quartile = jax.nn.one_hot(jnp.clip((terms["t"] * 4).astype(jnp.int32), 0, 3), 4)
    parts[LOSS_T_SUM] = (quartile * per_example[:, None]).sum(0)
    parts[LOSS_T_COUNT] = quartile.sum(0)
    return loss, parts

  return loss_fn


def step_key(config, step) -> jax.Array:
  """The randomness of one train step: a function of the seed and the step only."""
  return jax.random.fold_in(jax.random.key(config.seed), step)


def _apply_ok(config, loss, grad_norm, guard) -> tuple[jax.Array, dict]:
  """(apply this update?, the next guard counters)."""
  t = config.train
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  applied = guard["loss_mean"] > 0     # a running mean exists once one step was applied
  if t.loss_spike_factor > 0:
    ok &= ~(applied & (loss > t.loss_spike_factor * guard["loss_mean"]))
  # Running mean over about loss_spike_window applied steps (first one: the loss itself).
  rate = jnp.where(applied, 1.0 / t.loss_spike_window, 1.0)
  mean = jnp.where(ok, guard["loss_mean"] + rate * (loss - guard["loss_mean"]),
                   guard["loss_mean"])
  skip = (~ok).astype(jnp.int32)
  return ok, {"skipped": guard["skipped"] + skip,
              "consecutive": (guard["consecutive"] + skip) * skip, "loss_mean": mean}


def make_train_step(config, graphdef, codecs: Codecs, tx, use_audio: bool) -> Callable:
  schedule = lr_schedule(config)
  ema_decay = config.optim.ema_decay
  loss_fn = make_loss_fn(config, graphdef, codecs, use_audio)
  faults = tuple(config.train.fault_nonfinite_steps)

  def step(state, batch, frozen):
    rng = step_key(config, state["step"])
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, rng, frozen)
    if faults:   # fault injection (tests, drills): an infinite gradient at these steps
      hit = jnp.isin(state["step"] + 1, jnp.asarray(faults))
      grads = jax.tree.map(lambda g: jnp.where(hit, jnp.inf, g), grads)
    grad_norm = optax.tree.norm(grads)
    ok, guard = _apply_ok(config, loss, grad_norm, state["guard"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = jax.tree.map(lambda e, p: e * ema_decay + (1.0 - ema_decay) * p, state["ema"], params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    # A skipped step's per-example losses add nothing to the loss by timestep quartile.
    parts = dict(parts, **{k: jnp.where(ok, parts[k], 0.0) for k in (LOSS_T_SUM, LOSS_T_COUNT)})
    metrics = {"loss": loss, **parts, "grad_norm": grad_norm,
               "lr": schedule(state["step"] - state["guard"]["skipped"]),
               "skipped_steps": guard["skipped"], "consecutive_skips": guard["consecutive"]}
    new_state = {"step": state["step"] + 1, "params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "ema": keep(ema, state["ema"]), "guard": guard}
    return new_state, metrics

  return step


def all_finite(state) -> jax.Array:
  """One on-device reduction: True when every floating-point leaf of `state` is finite."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def jit_train_step(step: Callable, state_sharding, batch_sharding, frozen_sharding) -> Callable:
  """step(state, batch, frozen) jitted: the state donated, the frozen weights an argument."""
  return jax.jit(step, in_shardings=(state_sharding, batch_sharding, frozen_sharding),
                 out_shardings=(state_sharding, None), donate_argnums=(0,))


def frozen_shardings(codecs: Codecs, mesh, axis_rules) -> dict:
  """Shardings of the frozen weights, by their logical axes (parallel/mesh.place_tree)."""
  return state_shardings(codecs.frozen_params(), mesh, axis_rules)


def place_frozen(codecs: Codecs, mesh, axis_rules) -> tuple[dict, dict]:
  """(frozen weights on the mesh, their shardings)."""
  return place_tree(codecs.frozen_params(), mesh, axis_rules)


def with_empty_latents(config, codecs: Codecs, batch: dict, frozen: dict, frozen_sharding,
                       mesh, use_audio: bool, *, abstract: bool = False) -> tuple[dict, dict]:
  """(frozen weights + "empties", their shardings) for batches shaped like `batch`: the
  empty condition latents (a black clip, silence) the step needs, encoded once here instead
  of in every step (on every device), replicated. abstract: ShapeDtypeStructs (AOT)."""
  shapes = needed_empty_latents(config, codecs, batch, frozen, use_audio)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  encode = functools.partial(compute_empty_latents, codecs, shapes=shapes)
  if abstract:
    empties = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                           jax.eval_shape(encode, frozen))
  else:
    empties = jax.jit(encode, out_shardings=replicated)(frozen)
  return ({**frozen, "empties": empties},
          {**frozen_sharding, "empties": {k: replicated for k in shapes}})
