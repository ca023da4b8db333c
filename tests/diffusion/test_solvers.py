"""ODE solvers (skyreels_jax/diffusion/solvers.py) on flows with known solutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skyreels_jax.diffusion import flow_matching as fm
from skyreels_jax.diffusion import solvers


def normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", solvers.SOLVERS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_solvers_integrate_a_straight_flow_exactly(name, shift):
  z0 = {"video": normal(20, (2, 3, 4)), "audio": normal(21, (2, 5))}
  eps = {"video": normal(22, (2, 3, 4)), "audio": normal(23, (2, 5))}
  v = jax.tree.map(lambda a, b: a - b, z0, eps)
  out = solvers.solve(name, lambda z, t: v, eps, fm.sampling_times(7, shift))
  for k in z0:
    np.testing.assert_allclose(out[k], z0[k], atol=1e-5)


def test_solvers_follow_the_true_velocity_of_the_path():
  """v(z, t) = (z0 - z) / (1 - t) is the straight-path velocity seen from z; both solvers
  land on z0 (the last step to t = 1 is an Euler step, so there is no division by zero)."""
  z0, eps = normal(24, (3, 4)), normal(25, (3, 4))
  velocity = lambda z, t: (z0 - z) / (1.0 - t)
  for name in solvers.SOLVERS:
    out = solvers.solve(name, velocity, eps, fm.sampling_times(6, 2.0))
    np.testing.assert_allclose(out, z0, atol=1e-4)


def test_heun_beats_euler_on_a_curved_flow():
  lam, z_init = 2.0, np.ones((4,), np.float32)
  exact = z_init * np.exp(lam)                       # dz/dt = lam z from t = 0 to 1
  times = fm.sampling_times(10)
  err_euler = np.abs(np.asarray(solvers.euler(lambda z, t: lam * z, z_init, times)) - exact)
  err_heun = np.abs(np.asarray(solvers.heun(lambda z, t: lam * z, z_init, times)) - exact)
  np.testing.assert_allclose(np.asarray(solvers.euler(lambda z, t: lam * z, z_init, times)),
                             z_init * 1.2 ** 10, rtol=1e-5)
  assert err_heun.max() < 0.2 * err_euler.max()
  # One step: Heun's last step is an Euler step.
  one = fm.sampling_times(1)
  np.testing.assert_allclose(solvers.heun(lambda z, t: lam * z, z_init, one),
                             solvers.euler(lambda z, t: lam * z, z_init, one), rtol=1e-6)
  with pytest.raises(ValueError, match="solver"):
    solvers.solve("rk4", lambda z, t: z, z_init, times)


def test_heun_does_not_evaluate_at_the_end():
  """N steps: 2N - 1 velocity evaluations (the last step is Euler's), none at t = 1."""
  seen = []

  def velocity(z, t):
    jax.debug.callback(lambda t: seen.append(float(t)), t)
    return -z

  times = jnp.linspace(0.0, 1.0, 5)
  jax.block_until_ready(jax.jit(lambda z: solvers.heun(velocity, z, times))(jnp.ones(3)))
  assert len(seen) == 7 and max(seen) == pytest.approx(0.75)
