"""Encoder speed: our Wan-2.1 VAE, Oobleck VAE and Qwen2.5-VL text encoder (JAX) vs diffusers /
transformers (PyTorch), with the same random weights on both sides.

Each section builds the PyTorch model with random weights, perturbs every tensor away from its
init, and loads that state dict into ours through the converter the checkpoints go through
(models/mappings/wan_vae.py, models/mappings/oobleck.py with weight-norm folding,
models/mappings/qwen.py), so both sides compute the same function. Then, on the same CPU, one after
the other (not interleaved: PyTorch's OpenMP threads spin after each call and would slow the
JAX call that follows), each side runs a few timed calls after untimed warm-up:
  * ours: jax.jit with the params as jit arguments, compile and warm-up excluded,
    block_until_ready;
  * peer: eval mode, torch.no_grad(), torch's default thread count.
  1. Wan-2.1 video VAE vs diffusers AutoencoderKLWan: encode (posterior mean) and decode,
     frames/s of pixel frames. The published layout (base_dim 96, ~127M params) has 9x the
     convolution FLOPs of base_dim 32, which already takes ~12 s per 17-frame 128x128 encode
     and ~16-23 s per decode on 2 CPU cores (at load 6), so the default is base_dim 32
     (same depth, compression and z_dim); --wan_base_dim 96 for the real one.
  2. Oobleck audio VAE vs diffusers AutoencoderOobleck, published layout (hop 2048, 156M
     params): encode / decode, seconds of 44.1 kHz stereo audio per second of wall time. The
     clip is rounded up to whole hops on both sides (ours would zero-pad to that anyway).
  3. Qwen2.5-VL text encoder vs transformers Qwen2_5_VLForConditionalGeneration's backbone
     (`.model`, i.e. the forward without lm_head, which the encoder never needs) with
     output_hidden_states=True, text only, no vision tower on our side: tokens/s.
The ratio is ours / peer time (< 1 is faster); the median of --repeats calls is used. Other
processes on the same cores distort the result (PyTorch's most): the load average is printed.

  python benchmarks/encoders.py                    # defaults: ~7 min on 2 CPU cores at load 6
  python benchmarks/encoders.py --no_wan --no_oobleck --qwen_seq 512
  python benchmarks/encoders.py --wan_base_dim 96 --wan_frames 9 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls after compile")
  p.add_argument("--no_wan", action="store_true", help="skip the Wan video VAE")
  p.add_argument("--wan_base_dim", type=int, default=32, help="96: the published layout")
  p.add_argument("--wan_batch", type=int, default=1)
  p.add_argument("--wan_frames", type=int, default=17, help="1 + 4k")
  p.add_argument("--wan_size", type=int, default=128, help="height = width, multiple of 8")
  p.add_argument("--no_oobleck", action="store_true", help="skip the Oobleck audio VAE")
  p.add_argument("--audio_seconds", type=float, default=0.5, help="rounded up to whole hops")
  p.add_argument("--audio_batch", type=int, default=1)
  p.add_argument("--no_qwen", action="store_true", help="skip the Qwen2.5-VL text encoder")
  p.add_argument("--qwen_hidden", type=int, default=512)
  p.add_argument("--qwen_intermediate", type=int, default=2048)
  p.add_argument("--qwen_layers", type=int, default=4)
  p.add_argument("--qwen_heads", type=int, default=8)
  p.add_argument("--qwen_kv_heads", type=int, default=2)
  p.add_argument("--qwen_vocab", type=int, default=4096)
  p.add_argument("--qwen_seq", type=int, default=256)
  p.add_argument("--qwen_batch", type=int, default=2)
  return p.parse_args(argv)


def median_seconds(call, repeats: int, warmup: int) -> float:
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def perturbed(model, scale: float = 0.05):
  """`model` with every tensor moved away from its init (unit norms, zero biases), in eval
  mode; and its state dict as numpy."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape))
  model.eval()
  return model, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def n_params(model) -> float:
  return sum(p.numel() for p in model.parameters()) / 1e6


def jax_times(fn, params, x, args) -> float:
  """Median seconds of a jitted `fn(params, x)`, compile and warm-up excluded."""
  import jax
  step = jax.jit(fn).lower(params, x).compile()
  return median_seconds(lambda: jax.block_until_ready(step(params, x)), args.repeats,
                        args.warmup)


def torch_times(fn, x, args) -> float:
  import torch
  with torch.no_grad():
    return median_seconds(lambda: fn(x), args.repeats, args.warmup)


def row(section: str, what: str, unit: str, amount: float, ours_s: float, peer_s: float):
  print(f"{section:8s} {what:7s} ours {amount / ours_s:9.2f} {unit:10s} peer "
        f"{amount / peer_s:9.2f} {unit:10s} ours {ours_s:7.3f}s peer {peer_s:7.3f}s "
        f"ratio {ours_s / peer_s:5.2f}")


def bench_wan(args):
  import jax.numpy as jnp
  import numpy as np
  import torch
  from diffusers import AutoencoderKLWan
  from flax import nnx

  from skyreels_jax.models.autoencoders.wan_vae import WanVAE, WanVideoAutoencoder
  from skyreels_jax.models.mappings import wan_vae as wm

  torch.manual_seed(0)
  peer, sd = perturbed(AutoencoderKLWan(base_dim=args.wan_base_dim))
  vae = WanVAE(wm.config_from_diffusers(dict(peer.config)), rngs=nnx.Rngs(0))
  wm.load_into_vae(vae, sd)
  ours = WanVideoAutoencoder(vae)
  b, f, s = args.wan_batch, args.wan_frames, args.wan_size
  video = np.random.default_rng(0).uniform(-1, 1, (b, f, s, s, 3)).astype(np.float32)
  lat_shape = (b, ours.latent_frames(f), *ours.latent_hw(s, s), ours.latent_channels)
  latents = np.random.default_rng(1).normal(size=lat_shape).astype(np.float32)
  print(f"wan: AutoencoderKLWan base_dim={args.wan_base_dim} ({n_params(peer):.1f}M params; "
        f"published: 96, 127M), {b} clip(s) of {f} frames {s}x{s} -> latents {lat_shape[1:]}")

  enc = jax_times(lambda p, x: ours.encode(x, params=p), ours.params, jnp.asarray(video), args)
  dec = jax_times(lambda p, z: ours.decode(z, params=p), ours.params, jnp.asarray(latents),
                  args)
  # Ours takes and returns normalised latents; diffusers raw ones: the same work up to an
  # affine map of 16 channels, left out on their side.
  tv = torch.from_numpy(np.ascontiguousarray(np.moveaxis(video, -1, 1)))
  tz = torch.from_numpy(np.ascontiguousarray(np.moveaxis(latents, -1, 1)))
  p_enc = torch_times(lambda x: peer.encode(x).latent_dist.mean, tv, args)
  p_dec = torch_times(lambda z: peer.decode(z).sample, tz, args)
  row("wan", "encode", "frames/s", b * f, enc, p_enc)
  row("wan", "decode", "frames/s", b * f, dec, p_dec)


def bench_oobleck(args):
  import jax.numpy as jnp
  import numpy as np
  import torch
  from diffusers import AutoencoderOobleck
  from flax import nnx

  from skyreels_jax.models.autoencoders.oobleck_vae import OobleckAudioAutoencoder, OobleckVAE
  from skyreels_jax.models.mappings import oobleck as om

  torch.manual_seed(0)
  peer = AutoencoderOobleck()
  with torch.no_grad():   # Snake logs away from 0, weight-norm g away from |v|
    for name, p in peer.named_parameters():
      if name.endswith(("alpha", "beta")):
        p.copy_(0.5 * torch.randn(p.shape))
      elif name.endswith("weight_g"):
        p.mul_(0.5 + torch.rand(p.shape))
  peer.eval()
  sd = {k: v.detach().numpy().copy() for k, v in peer.state_dict().items()}
  vae = OobleckVAE(om.config_from_diffusers(dict(peer.config)), rngs=nnx.Rngs(0))
  om.load_into_vae(vae, sd)   # folds weight_g / weight_v into kernels
  ours = OobleckAudioAutoencoder(vae)
  rate, b = ours.sampling_rate, args.audio_batch
  k = ours.latent_length(max(1, round(args.audio_seconds * rate)))
  samples = ours.num_samples(k)
  seconds = b * samples / rate
  audio = np.random.default_rng(0).uniform(-1, 1, (b, samples, ours.channels))
  audio = audio.astype(np.float32)
  latents = np.random.default_rng(1).normal(size=(b, k, ours.latent_channels))
  latents = latents.astype(np.float32)
  print(f"oobleck: AutoencoderOobleck published layout ({n_params(peer):.1f}M params, hop "
        f"{ours.hop}), {b} clip(s) of {samples} samples = {samples / rate:.3f}s of {rate} Hz "
        f"{ours.channels}-channel audio -> {k} latents")

  enc = jax_times(lambda p, x: ours.encode(x, params=p), ours.params, jnp.asarray(audio), args)
  dec = jax_times(lambda p, z: ours.decode(z, params=p), ours.params, jnp.asarray(latents),
                  args)
  ta = torch.from_numpy(np.ascontiguousarray(np.moveaxis(audio, -1, 1)))
  tz = torch.from_numpy(np.ascontiguousarray(np.moveaxis(latents, -1, 1)))
  p_enc = torch_times(lambda x: peer.encode(x).latent_dist.mean, ta, args)
  p_dec = torch_times(lambda z: peer.decode(z).sample, tz, args)
  row("oobleck", "encode", "audio s/s", seconds, enc, p_enc)
  row("oobleck", "decode", "audio s/s", seconds, dec, p_dec)


def bench_qwen(args):
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  from skyreels_jax.models.mappings import qwen as qwen_mapping

  head_dim = args.qwen_hidden // args.qwen_heads
  t = head_dim // 2 // 4   # mrope (t, h, w) split in the published 16:24:24 proportion
  section = [t, (head_dim // 2 - t) // 2, head_dim // 2 - t - (head_dim // 2 - t) // 2]
  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=args.qwen_vocab, hidden_size=args.qwen_hidden,
                       intermediate_size=args.qwen_intermediate,
                       num_hidden_layers=args.qwen_layers,
                       num_attention_heads=args.qwen_heads,
                       num_key_value_heads=args.qwen_kv_heads, rms_norm_eps=1e-6,
                       bos_token_id=1, eos_token_id=2,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                        "mrope_section": section}),
      vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                         out_hidden_size=args.qwen_hidden))   # unused: text only
  peer, sd = perturbed(Qwen2_5_VLForConditionalGeneration(cfg), scale=0.01)
  enc_cfg = qwen_mapping.config_from_hf(cfg.to_dict(), with_vision=False)
  ours = qwen_mapping.abstract_encoder(enc_cfg)
  qwen_mapping.load_into_encoder(ours, sd)
  b, s = args.qwen_batch, args.qwen_seq
  ids = np.random.default_rng(0).integers(10, args.qwen_vocab, (b, s)).astype(np.int32)
  mask = np.ones((b, s), bool)
  n_text = sum(p.numel() for p in peer.model.language_model.parameters()) / 1e6
  print(f"qwen: Qwen2.5-VL text encoder hidden={args.qwen_hidden} "
        f"intermediate={args.qwen_intermediate} layers={args.qwen_layers} "
        f"heads={args.qwen_heads} kv_heads={args.qwen_kv_heads} vocab={args.qwen_vocab} "
        f"mrope_section={tuple(section)} ({n_text:.1f}M params), batch {b} x seq {s}, "
        f"no padding")

  from flax import nnx
  graphdef, state = nnx.split(ours)

  def forward(state, x):
    hidden, _ = nnx.merge(graphdef, state)(x, jnp.ones(x.shape, bool))
    return hidden

  enc = jax_times(forward, state, jnp.asarray(ids), args)
  tids = torch.from_numpy(ids.astype(np.int64))
  tmask = torch.from_numpy(mask.astype(np.int64))
  p_enc = torch_times(lambda x: peer.model(input_ids=x, attention_mask=tmask,
                                           output_hidden_states=True).hidden_states[-1],
                      tids, args)
  row("qwen", "forward", "tokens/s", b * s, enc, p_enc)


def main(argv=None):
  args = parse_args(argv)
  import diffusers
  import jax
  import torch
  import transformers

  print(f"encoders: device={jax.devices()[0].device_kind} cpus={os.cpu_count()} jax "
        f"{jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__}; float32; "
        f"median of {args.repeats} calls after {args.warmup} warm-up; load average "
        f"{os.getloadavg()[0]:.1f} (other processes on these cores skew both, PyTorch's "
        f"OpenMP most)")
  if not args.no_wan:
    bench_wan(args)
  if not args.no_oobleck:
    bench_oobleck(args)
  if not args.no_qwen:
    bench_qwen(args)
  print(f"encoders: load average at the end {os.getloadavg()[0]:.1f}; ratio = ours/peer time "
        f"(< 1 is faster)")


if __name__ == "__main__":
  main()
