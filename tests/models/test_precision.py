"""bf16 compute over fp32 master params: params stay fp32, outputs track the fp32 model."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skyreels_jax.models.mmdit import MMDiT, MMDiTConfig


def _model(dtype):
  cfg = MMDiTConfig(width=32, num_heads=2, mlp_ratio=2.0, num_dual_blocks=1,
                    num_single_blocks=1, video_latent_channels=4, audio_latent_channels=3,
                    text_dim=16, rope_axes_dim=(4, 6, 6), audio_time_scale=0.5,
                    dtype=dtype, param_dtype=jnp.float32)
  with nnx.use_eager_sharding(False):
    return MMDiT(cfg, rngs=nnx.Rngs(0))


def test_bf16_compute_keeps_fp32_params_and_matches_fp32():
  rng = np.random.default_rng(0)
  fp32, bf16 = _model(jnp.float32), _model(jnp.bfloat16)
  # Non-zero weights everywhere (the zero-initialised gates would hide the compute dtype).
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape), jnp.float32),
                        nnx.state(fp32, nnx.Param))
  nnx.update(fp32, params)
  nnx.update(bf16, params)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  inputs = dict(video=jnp.asarray(rng.normal(size=(2, 2, 4, 4, 9)), jnp.float32),
                video_timestep=jnp.array([100.0, 700.0]),
                text=jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32),
                text_mask=jnp.ones((2, 5), bool),
                audio=jnp.asarray(rng.normal(size=(2, 6, 7)), jnp.float32),
                audio_timestep=jnp.array([100.0, 700.0]))
  fwd = lambda m: jax.jit(lambda p, i: nnx.merge(nnx.graphdef(m), p)(**i))(nnx.state(m), inputs)
  (v32, a32), (v16, a16) = fwd(fp32), fwd(bf16)
  assert v16.dtype == jnp.float32  # the heads return float32
  for lo, hi in ((v16, v32), (a16, a32)):
    rel = float(jnp.linalg.norm(lo - hi) / jnp.linalg.norm(hi))
    assert 1e-5 < rel < 5e-2, rel   # bf16 really ran (not identical) and stays close
