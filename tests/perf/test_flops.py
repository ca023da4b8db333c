"""Analytic FLOPs of the MMDiT: a hand count, and XLA's own count of the compiled forward."""

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.models.mmdit import MMDiT, MMDiTConfig
from skyreels_jax.perf.flops import mmdit_forward_flops, mmdit_train_flops


def _tiny(**kw) -> MMDiTConfig:
  base = dict(width=8, num_heads=1, mlp_ratio=2.0, num_dual_blocks=1, num_single_blocks=0,
              video_latent_channels=1, audio_latent_channels=1, text_dim=4, patch_size=1,
              rope_axes_dim=(2, 2, 4), use_audio=False, text_cross_attention=False)
  return MMDiTConfig(**{**base, **kw})


# d = 8, mlp = 16, B = 1, S = 4 video tokens (patch 1, in 2C+1 = 3, out C = 1), L = 2 text
# tokens (text_dim 4), so N = 6 joint tokens.
IO = (2 * 4 * 3 * 8            # x_embedder
      + 2 * 2 * 4 * 8          # context_embedder
      + 2 * (256 * 8 + 8 * 8)  # timestep embedder
      + 2 * (4 * 8 + 8 * 8)    # pooled-text embedder
      + 2 * 8 * 16             # norm_out (AdaLN-continuous)
      + 2 * 4 * 8 * 1)         # proj_out
ATTN = 2 * 6 * 6 * 8 * 2       # QK^T + PV over the 6 joint tokens
DUAL = (2 * (2 * 8 * 48)       # norm1 + norm1_context
        + 2 * 6 * 8 * 24       # q, k, v (both streams)
        + 2 * 6 * 8 * 8        # to_out + to_add_out
        + 2 * (2 * 6 * 8 * 16)  # ff and ff_context, two matmuls each
        + ATTN)
SINGLE = (2 * 8 * 24           # norm
          + 2 * 6 * 8 * 24     # q, k, v
          + 2 * 6 * 8 * 16     # proj_mlp
          + 2 * 6 * 24 * 8     # proj_out over [attn; mlp]
          + ATTN)


def test_hand_count_one_dual_block():
  got = mmdit_train_flops(_tiny(), batch=1, video_tokens=4, text_len=2)
  assert IO + DUAL == 13888
  assert got == 3 * (IO + DUAL)


def test_hand_count_single_block_and_batch():
  cfg = _tiny(num_single_blocks=1)
  assert mmdit_forward_flops(cfg, batch=1, video_tokens=4, text_len=2) == IO + DUAL + SINGLE
  # Everything is linear in the batch.
  assert mmdit_forward_flops(cfg, batch=3, video_tokens=4, text_len=2) == 3 * (
      IO + DUAL + SINGLE)


def test_matches_xla_cost_analysis_of_unscanned_forward():
  """Joint model with text and A<->V cross-attention. XLA also counts the elementwise ops
  (norms, softmax, RoPE, GELU) that the analytic count leaves out: a few % at width 128."""
  cfg = MMDiTConfig(width=128, num_heads=2, mlp_ratio=4.0, num_dual_blocks=1,
                    num_single_blocks=1, video_latent_channels=4, audio_latent_channels=4,
                    text_dim=64, rope_axes_dim=(16, 24, 24), use_audio=True,
                    text_cross_attention=True, scan_blocks=False)  # scan: body counted once
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: MMDiT(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)

  def forward(state, video, t, text, text_mask, audio):
    return nnx.merge(graphdef, state)(video=video, video_timestep=t, text=text,
                                      text_mask=text_mask, audio=audio, audio_timestep=t)

  s = jax.ShapeDtypeStruct
  (t, h, w), length, audio_len = (2, 8, 8), 16, 24
  cost = jax.jit(forward).lower(
      state, s((1, t, h, w, 9), jnp.float32), s((1,), jnp.float32),
      s((1, length, 64), jnp.float32), s((1, length), jnp.bool_),
      s((1, audio_len, 9), jnp.float32)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = mmdit_forward_flops(cfg, batch=1, video_tokens=t * h * w // 4, text_len=length,
                                 audio_tokens=audio_len)
  # XLA also drops the last single block's text-stream work (its output is unused: ~7% here,
  # with 16 text tokens and one single block); a scanned model cannot drop it.
  assert 0.9 < analytic / cost["flops"] < 1.1, (analytic, cost["flops"])
