"""ODE solvers for the flow `dz/dt = v(z, t)` from t = 0 (noise) to t = 1 (data).

`velocity(z, t) -> v` takes and returns pytrees (video, audio, ...); `times` from
flow_matching.sampling_times. Both solvers run as `lax.fori_loop`, so one compile serves
any number of steps of the same shape. `on_step(i)`, when given, is called on the host as
step i runs (a progress bar); a program with it is not kept in the persistent XLA cache.
"""

from __future__ import annotations

from typing import Callable

import jax

from skyreels_jax.core import check
from skyreels_jax.diffusion.flow_matching import SHIFT_MODES

SOLVERS = ("euler", "heun")


def _axpy(a, x, y):
  return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _ticking(step: Callable, on_step: Callable | None) -> Callable:
  if on_step is None:
    return step

  def ticked(i, z):
    jax.debug.callback(on_step, i)   # one call per step, on the host of device 0
    return step(i, z)
  return ticked


def euler(velocity: Callable, z, times: jax.Array, on_step: Callable | None = None):
  def step(i, z):
    t, t_next = times[i], times[i + 1]
    return _axpy(t_next - t, velocity(z, t), z)
  return jax.lax.fori_loop(0, times.shape[0] - 1, _ticking(step, on_step), z)


def heun(velocity: Callable, z, times: jax.Array, on_step: Callable | None = None):
  """Heun's second-order method; the last step (to t = 1) is an Euler step, which does not
  evaluate the velocity at t = 1 at all (2N - 1 evaluations for N steps)."""
  n = times.shape[0] - 1

  def step(i, z):
    t, t_next = times[i], times[i + 1]
    dt = t_next - t
    v1 = velocity(z, t)
    z_pred = _axpy(dt, v1, z)

    def corrected(_):
      v2 = velocity(z_pred, t_next)
      return _axpy(dt, jax.tree.map(lambda a, b: 0.5 * (a + b), v1, v2), z)
    return jax.lax.cond(i == n - 1, lambda _: z_pred, corrected, None)
  return jax.lax.fori_loop(0, n, _ticking(step, on_step), z)


def solve(name: str, velocity: Callable, z, times: jax.Array,
          on_step: Callable | None = None):
  if name == "euler":
    return euler(velocity, z, times, on_step)
  if name == "heun":
    return heun(velocity, z, times, on_step)
  raise ValueError(f"sample.solver={name!r}: choose one of {SOLVERS}")


def check_config(config) -> None:
  """sample.*: raises ConfigError naming the field."""
  s = config.sample
  check(s.shift_mode in SHIFT_MODES, "sample.shift_mode",
        f"{s.shift_mode!r} is not one of {sorted(SHIFT_MODES)}")
  check(s.solver in SOLVERS, "sample.solver", f"{s.solver!r} is not one of {sorted(SOLVERS)}")
  check(s.num_steps >= 1, "sample.num_steps", "must be >= 1")
  check(s.embedded_guidance >= 0, "sample.embedded_guidance", "must be >= 0")
