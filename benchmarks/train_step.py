"""Train-step speed: our MMDiT (JAX) vs diffusers' HunyuanVideoTransformer3DModel (PyTorch).

Both run a forward + backward of a mean-squared loss (no optimizer update) at the same width,
heads, depth, token counts and text length, on the same CPU, one after the other (not
interleaved: PyTorch's OpenMP threads spin after each step and would slow the JAX step that
follows). Our model runs video-only (model.use_audio=False, model.text_cross_attention=False),
which is the HunyuanVideo layout block for block. What still differs, and how it is handled:
  * input channels: both take 2C+1 (Concat(noisy, condition, mask); HunyuanVideo-I2V's
    `latent_concat` layout) and predict C;
  * their text goes through a token refiner (num_refiner_layers=1 here) that we do not have:
    its FLOPs are added to theirs;
  * their pooled text is an input of width text_dim; ours is the masked mean of the text.
FLOPs are analytic (skyreels_jax.perf.flops: matmuls only, backward = 2 x forward), so the
achieved GFLOP/s of both sides are comparable. `--joint` adds a line for our full joint
model (audio branch, text and audio<->video cross-attention), which has no peer.

Other processes on the same cores distort the result, PyTorch's most (its OpenMP barriers
stall when a thread is descheduled: 10x slower steps were seen at load 4 on 2 cores); the
load average is printed with the result.

  python benchmarks/train_step.py            # defaults: < 3 min on 2 CPU cores
  python benchmarks/train_step.py --width 512 --heads 8 --steps 10 --joint
  python benchmarks/train_step.py --unroll --no_peer     # a variant of our step alone
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--width", type=int, default=256, help="model width")
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--dual", type=int, default=2, help="dual-stream blocks")
  p.add_argument("--single", type=int, default=4, help="single-stream blocks")
  p.add_argument("--mlp_ratio", type=float, default=4.0)
  p.add_argument("--frames", "--latent_frames", type=int, default=4, help="latent frames")
  p.add_argument("--height", "--latent_height", type=int, default=16, help="latent height")
  p.add_argument("--latent_width", type=int, default=16,
                 help="latent width (--width is the model width)")
  p.add_argument("--channels", type=int, default=16, help="latent channels C")
  p.add_argument("--patch", type=int, default=2, help="spatial patch (temporal patch 1)")
  p.add_argument("--text_len", type=int, default=32)
  p.add_argument("--text_dim", type=int, default=256)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--joint", action="store_true",
                 help="also time our full joint model (audio branch + cross-attentions)")
  p.add_argument("--audio_len", type=int, default=64, help="audio tokens (with --joint)")
  p.add_argument("--audio_channels", type=int, default=64, help="audio latent channels")
  p.add_argument("--no_peer", action="store_true", help="skip the PyTorch model")
  # Variants of our step (README "Where our step's time goes"); the peer is unchanged.
  p.add_argument("--unroll", action="store_true", help="model.scan_blocks=False")
  p.add_argument("--attention", default="dot_product", choices=["dot_product", "blockwise"])
  p.add_argument("--remat", default="none", choices=["none", "save_dots", "full"])
  return p.parse_args(argv)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
  """(t, h, w) split of the head dim, as HunyuanVideo's (16, 56, 56) for 128: t gets ~1/8."""
  hw = (head_dim - max(2, head_dim // 8)) // 4 * 2
  return (head_dim - 2 * hw, hw, hw)


def our_config(args, *, joint: bool):
  """configs/base.py with the benchmark's sizes; the autoencoders are bypassed (the MMDiT
  is called on random latents), so only the latent channel counts are set directly."""
  from configs import base
  from skyreels_jax import config as config_lib
  c = base.get_config()
  c.model.width, c.model.num_heads = args.width, args.heads
  c.model.num_dual_blocks, c.model.num_single_blocks = args.dual, args.single
  c.model.mlp_ratio = args.mlp_ratio
  c.model.rope_axes_dim = rope_axes(args.width // args.heads)
  c.model.use_audio = joint
  c.model.text_cross_attention = joint
  c.model.dtype = args.dtype
  c.model.scan_blocks = not args.unroll
  c.model.remat = args.remat
  c.attention = args.attention
  c.text.width = args.text_dim
  config_lib.validate(c)
  _, mcfg = config_lib.derive(c)
  return dataclasses.replace(mcfg, video_latent_channels=args.channels,
                             audio_latent_channels=args.audio_channels, patch_size=args.patch)


def video_tokens(args) -> int:
  return args.frames * (args.height // args.patch) * (args.latent_width // args.patch)


@dataclasses.dataclass(frozen=True)
class Timing:
  best: float     # the least disturbed step: what the ratio uses
  median: float

  def __str__(self):
    return f"{self.best:.3f}s/step (median {self.median:.3f}s)"


def timed(step, n: int) -> Timing:
  """Seconds of `step()` over `n` calls."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  if not times:
    return Timing(float("nan"), float("nan"))
  return Timing(min(times), statistics.median(times))


def make_ours(args, mcfg):
  """(step function, compile seconds) of jit(value_and_grad(mse)), already warmed up."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from skyreels_jax.models.mmdit import MMDiT

  with nnx.use_eager_sharding(False):
    model = MMDiT(mcfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  b, c, ca = args.batch, args.channels, args.audio_channels
  grid = (args.frames, args.height, args.latent_width)
  batch = dict(
      video=rng.standard_normal((b, *grid, 2 * c + 1)),
      video_target=rng.standard_normal((b, *grid, c)),
      video_timestep=rng.uniform(0, 1000, (b,)),
      text=rng.standard_normal((b, args.text_len, args.text_dim)),
      text_mask=np.ones((b, args.text_len), bool))
  if mcfg.use_audio:
    batch.update(audio=rng.standard_normal((b, args.audio_len, 2 * ca + 1)),
                 audio_target=rng.standard_normal((b, args.audio_len, ca)),
                 audio_timestep=rng.uniform(0, 1000, (b,)))
  batch = {k: jnp.asarray(v, jnp.float32 if v.dtype == np.float64 else v.dtype)
           for k, v in batch.items()}

  def loss_fn(params, batch):
    m = nnx.merge(graphdef, params, rest)
    inputs = {k: v for k, v in batch.items() if not k.endswith("_target")}
    v, a = m(**inputs)
    loss = jnp.mean(jnp.square(v - batch["video_target"]))
    if a is not None:
      loss = loss + jnp.mean(jnp.square(a - batch["audio_target"]))
    return loss

  t0 = time.perf_counter()
  step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, batch).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(step(params, batch))
  timed(run, args.warmup)
  return run, compile_s


def refiner_forward_flops(args, num_layers: int = 1) -> int:
  """diffusers' HunyuanVideoTokenRefiner beyond its proj_in (which equals our
  context_embedder): its own timestep + pooled-text embedding and `num_layers` blocks of
  self-attention over the text and a 4x SiLU MLP, with a 2-way AdaNorm."""
  b, n, d, e = args.batch, args.text_len, args.width, args.text_dim
  lin = lambda rows, i, o: 2 * rows * i * o
  embed = lin(b, 256, d) + lin(b, d, d) + lin(b, e, d) + lin(b, d, d)
  block = (lin(b, d, 2 * d) + lin(b * n, d, 3 * d) + 4 * b * n * n * d + lin(b * n, d, d)
           + lin(b * n, d, 4 * d) + lin(b * n, 4 * d, d))
  return embed + num_layers * block


def make_peer(args, axes):
  """Step function (forward + loss.backward()) of HunyuanVideoTransformer3DModel, warmed up."""
  import torch
  from diffusers import HunyuanVideoTransformer3DModel

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  c, b = args.channels, args.batch
  model = HunyuanVideoTransformer3DModel(
      in_channels=2 * c + 1, out_channels=c, num_attention_heads=args.heads,
      attention_head_dim=args.width // args.heads, num_layers=args.dual,
      num_single_layers=args.single, num_refiner_layers=1, mlp_ratio=args.mlp_ratio,
      patch_size=args.patch, patch_size_t=1, guidance_embeds=False,
      text_embed_dim=args.text_dim, pooled_projection_dim=args.text_dim,
      rope_axes_dim=axes).train()
  if dtype != torch.float32:
    model = model.to(dtype)
  grid = (args.frames, args.height, args.latent_width)
  x = torch.randn(b, 2 * c + 1, *grid, dtype=dtype)
  target = torch.randn(b, c, *grid, dtype=dtype)
  t = torch.rand(b) * 1000
  text = torch.randn(b, args.text_len, args.text_dim, dtype=dtype)
  mask = torch.ones(b, args.text_len, dtype=torch.int64)
  pooled = text.mean(1)

  def run():
    model.zero_grad(set_to_none=True)
    out = model(x, t, text, mask, pooled).sample
    torch.mean(torch.square(out.float() - target.float())).backward()

  timed(run, args.warmup)
  return run


def main(argv=None):
  args = parse_args(argv)
  import jax

  from skyreels_jax.perf.flops import mmdit_train_flops

  mcfg = our_config(args, joint=False)
  nv = video_tokens(args)
  tokens = dict(batch=args.batch, video_tokens=nv, text_len=args.text_len)
  print(f"train_step: width={args.width} heads={args.heads} dual={args.dual} "
        f"single={args.single} mlp_ratio={args.mlp_ratio} latent={args.frames}x{args.height}x"
        f"{args.latent_width}x{args.channels} patch=1x{args.patch}x{args.patch} -> {nv} video "
        f"tokens, text_len={args.text_len} text_dim={args.text_dim} batch={args.batch} "
        f"dtype={args.dtype} rope_axes={mcfg.rope_axes_dim} ours: attention={args.attention} "
        f"remat={args.remat} scan_blocks={not args.unroll}")
  print(f"train_step: input channels 2C+1={2 * args.channels + 1} on both sides (out C="
        f"{args.channels}); device={jax.devices()[0].device_kind} cpus={os.cpu_count()}; "
        f"best and median of {args.steps} steps after {args.warmup} warmup; load average "
        f"{os.getloadavg()[0]:.1f} (other processes on these cores skew both, PyTorch's "
        f"OpenMP most)")

  ours_flops = mmdit_train_flops(mcfg, **tokens)
  ours_run, compile_s = make_ours(args, mcfg)
  ours_s = timed(ours_run, args.steps)
  print(f"train_step: ours (jax, video-only) {ours_s}, compile {compile_s:.1f}s, "
        f"{ours_flops / 1e9:.2f} GFLOP/step, {ours_flops / ours_s.best / 1e9:.1f} GFLOP/s")
  if not args.no_peer:
    import torch
    peer_flops = ours_flops + 3 * refiner_forward_flops(args)
    peer_s = timed(make_peer(args, mcfg.rope_axes_dim), args.steps)
    print(f"train_step: peer (torch {torch.__version__}, diffusers "
          f"HunyuanVideoTransformer3DModel, 1 refiner layer, {torch.get_num_threads()} threads)"
          f" {peer_s}, {peer_flops / 1e9:.2f} GFLOP/step, "
          f"{peer_flops / peer_s.best / 1e9:.1f} GFLOP/s")

  if args.joint:
    jcfg = our_config(args, joint=True)
    jflops = mmdit_train_flops(jcfg, **tokens, audio_tokens=args.audio_len)
    j_run, j_compile = make_ours(args, jcfg)
    j_s = timed(j_run, args.steps)
    print(f"train_step: ours (jax, joint video+audio, {args.audio_len} audio tokens, text "
          f"and A<->V cross-attn) {j_s}, compile {j_compile:.1f}s, "
          f"{jflops / 1e9:.2f} GFLOP/step, {jflops / j_s.best / 1e9:.1f} GFLOP/s (no peer)")

  if not args.no_peer:
    print(f"train_step: load average at the end {os.getloadavg()[0]:.1f}")
    print(f"train_step: ours={ours_s.best:.3f}s peer={peer_s.best:.3f}s "
          f"ratio={ours_s.best / peer_s.best:.2f} (ours/peer time per step, best of "
          f"{args.steps}; <1 is faster)")


if __name__ == "__main__":
  main()
