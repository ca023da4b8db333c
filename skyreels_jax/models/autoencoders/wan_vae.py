"""The Wan-2.1 video VAE (diffusers `AutoencoderKLWan`) in NNX, channels-last.

Causal 3D convolutions compress 4x in time and 8x8 in space: a clip of 1 + 4k frames becomes
1 + k latent frames of `z_dim` channels (the first frame is encoded alone, as an image).
Weights load from diffusers through tools/wan_vae_mapping.py.

Latents are NORMALISED here: `encode` returns (posterior mean - latents_mean) / latents_std
and `decode` takes such latents. diffusers' `AutoencoderKLWan` returns and takes the raw
latents and leaves the normalisation to its pipelines; the flow model only ever sees
normalised ones, so we keep the pair inside the autoencoder.

Bounded memory: like diffusers, encode runs the first frame alone and then chunks of 4 frames,
decode one latent frame at a time, each causal convolution carrying the last frames of its
input from chunk to chunk. Here the chunks are a `lax.scan` whose carry is that cache (fixed
shapes: the first chunk is run outside the scan and seeds it), so activation memory does not
grow with the clip length. diffusers' first-chunk rules are kept exactly: the temporal
downsampler passes the first frame through without its time convolution, and the temporal
upsampler does not double the first latent frame (1 + 4k frames out of 1 + k latents).
Optional spatial tiling (diffusers' `enable_tiling`, in tiling.py) bounds memory by the tile
instead of the frame. Not done: Wan 2.2 (`is_residual`, `patch_size`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.models.autoencoders import cast_params, tiling

# diffusers' defaults: the per-channel statistics of Wan 2.1 latents.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """diffusers' `AutoencoderKLWan` config, Wan 2.1 subset (`temperal_downsample` spelt
  right here); see tools/wan_vae_mapping.config_from_diffusers."""
  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  in_channels: int = 3
  out_channels: int = 3

  def __post_init__(self):
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"temporal_downsample has {len(self.temporal_downsample)} entries, "
                       f"dim_mult {len(self.dim_mult)}: need one per downsampling")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"latents_mean/std need z_dim={self.z_dim} entries")

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(map(bool, self.temporal_downsample))

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)


def encoder_blocks(cfg: WanVAEConfig) -> list[tuple]:
  """The encoder's `down_blocks` in diffusers' order: ("res", in, out) or
  (resample mode, dim). Shared with the weight mapping so the two cannot drift."""
  dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
  blocks = []
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      blocks.append(("res", cin, cout))
      cin = cout
    if i != len(cfg.dim_mult) - 1:
      blocks.append(("downsample3d" if cfg.temporal_downsample[i] else "downsample2d", cout))
  return blocks


def decoder_blocks(cfg: WanVAEConfig) -> list[tuple[int, int, str | None]]:
  """The decoder's `up_blocks`: (in, out, upsample mode or None). Each upsampler halves the
  channels, hence the `// 2` of every block after the first (Wan 2.1)."""
  base = cfg.decoder_base_dim or cfg.base_dim
  dims = [base * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
  ups = cfg.temporal_downsample[::-1]
  blocks = []
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    mode = None
    if i != len(cfg.dim_mult) - 1:
      mode = "upsample3d" if ups[i] else "upsample2d"
    blocks.append((cin // 2 if i else cin, cout, mode))
  return blocks


class _Caches:
  """The causal state of one chunk: the caches read (None for the first chunk, whose layers
  start from zeros or their first-chunk rule) and those written, in call order."""

  def __init__(self, old):
    self.first = old is None
    self._old = iter(old or ())
    self.new: list[jax.Array] = []

  def take(self) -> jax.Array:
    return next(self._old)

  def put(self, cache: jax.Array) -> None:
    self.new.append(cache)


def _kernel(rngs: nnx.Rngs, shape) -> nnx.Param:
  return nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape, jnp.float32))


class CausalConv3d(nnx.Module):
  """Conv3d zero-padded only on the past side in time (kernel (kt, kh, kw), spatial 'same').
  With `caches`, the padding is the last kt - 1 input frames of the previous chunk (zeros
  for the first), which makes chunked and one-shot runs identical."""

  def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride_t: int = 1, *,
               rngs: nnx.Rngs):
    kt, kh, kw = kernel
    self.kt, self.stride_t = kt, stride_t
    self.padding = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2))
    self.kernel = _kernel(rngs, (kt, kh, kw, cin, cout))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def valid(self, x: jax.Array) -> jax.Array:
    """The convolution over frames that already include their past (no time padding)."""
    y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype),
                                     (self.stride_t, 1, 1), self.padding,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                     preferred_element_type=jnp.float32)  # bf16: fp32 sums
    return (y + self.bias[...]).astype(x.dtype)

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    if self.kt == 1:
      return self.valid(x)
    if caches.first:
      past = jnp.zeros((x.shape[0], self.kt - 1, *x.shape[2:]), x.dtype)
    else:
      past = caches.take()
    x = jnp.concatenate([past, x], axis=1)
    caches.put(x[:, -(self.kt - 1):])
    return self.valid(x)


class Conv2d(nnx.Module):
  """Per-frame 2D convolution (the resamplers' spatial part)."""

  def __init__(self, cin: int, cout: int, stride: int, padding, *, rngs: nnx.Rngs):
    self.stride, self.padding = stride, padding
    self.kernel = _kernel(rngs, (3, 3, cin, cout))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(x.reshape(b * t, *x.shape[2:]),
                                     self.kernel[...].astype(x.dtype), (self.stride,) * 2,
                                     self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     preferred_element_type=jnp.float32)
    y = (y + self.bias[...]).astype(x.dtype)
    return y.reshape(b, t, *y.shape[1:])


class RMSNorm(nnx.Module):
  """diffusers' WanRMS_norm: x / max(|x|, 1e-12) * sqrt(dim) * gamma over channels, in
  float32 (it normalises half precision in float32 too)."""

  def __init__(self, dim: int):
    self.scale = dim ** 0.5
    self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    return (xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...]).astype(x.dtype)


class ResidualBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cin)
    self.conv1 = CausalConv3d(cin, cout, rngs=rngs)
    self.norm2 = RMSNorm(cout)
    self.conv2 = CausalConv3d(cout, cout, rngs=rngs)
    self.conv_shortcut = CausalConv3d(cin, cout, (1, 1, 1), rngs=rngs) if cin != cout else None

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    h = x if self.conv_shortcut is None else self.conv_shortcut(x, caches)
    x = self.conv1(jax.nn.silu(self.norm1(x)), caches)
    x = self.conv2(jax.nn.silu(self.norm2(x)), caches)   # dropout: inference only
    return x + h


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the pixels of each frame (no mixing across time, so it
  needs no cache)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim)
    self.to_qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array, caches: _Caches | None = None) -> jax.Array:
    b, t, h, w, c = x.shape
    q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)
    o = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    return x + self.proj(o)


class Resample(nnx.Module):
  """2x spatial down/up-sampling, and for the "3d" modes 2x in time (a stride-2 causal conv
  down, a conv to 2x channels split into two frames up), with diffusers' first-chunk rules."""

  def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs):
    self.mode = mode
    if mode.startswith("up"):
      self.spatial_conv = Conv2d(dim, dim // 2, 1, ((1, 1), (1, 1)), rngs=rngs)
      self.time_conv = (CausalConv3d(dim, 2 * dim, (3, 1, 1), rngs=rngs)
                        if mode == "upsample3d" else None)
    elif mode.startswith("down"):
      # ZeroPad2d((0, 1, 0, 1)) then a valid stride-2 conv
      self.spatial_conv = Conv2d(dim, dim, 2, ((0, 1), (0, 1)), rngs=rngs)
      self.time_conv = (CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, rngs=rngs)
                        if mode == "downsample3d" else None)
    else:
      raise ValueError(f"resample mode {mode!r}")

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    if self.mode == "upsample3d":
      b, t, h, w, c = x.shape
      if caches.first:
        # diffusers' "Rep": the first latent frame is not doubled; the time conv starts on
        # the next frame from zero padding.
        caches.put(jnp.zeros((b, 2, h, w, c), x.dtype))
      else:
        x = self.time_conv(x, caches).reshape(b, t, h, w, 2, c)
        x = jnp.moveaxis(x, 4, 2).reshape(b, 2 * t, h, w, c)
    if self.mode.startswith("up"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)   # nearest-exact at scale 2
      return self.spatial_conv(x)
    x = self.spatial_conv(x)
    if self.mode == "downsample3d":
      # The first frame passes without the time conv; later frames see the previous chunk's
      # last frame: outputs conv(x[2k-2], x[2k-1], x[2k]) for k >= 1.
      if not caches.first:
        past = caches.take()
        caches.put(x[:, -1:])
        return self.time_conv.valid(jnp.concatenate([past, x], axis=1))
      caches.put(x[:, -1:])
    return x


class MidBlock(nnx.Module):

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    x = self.resnets[0](x, caches)
    return self.resnets[1](self.attentions[0](x), caches)


class Encoder(nnx.Module):

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    dim = cfg.base_dim * cfg.dim_mult[-1]
    self.conv_in = CausalConv3d(cfg.in_channels, cfg.base_dim, rngs=rngs)
    self.down_blocks = nnx.List([
        ResidualBlock(b[1], b[2], rngs=rngs) if b[0] == "res" else Resample(b[1], b[0], rngs=rngs)
        for b in encoder_blocks(cfg)])
    self.mid_block = MidBlock(dim, rngs=rngs)
    self.norm_out = RMSNorm(dim)
    self.conv_out = CausalConv3d(dim, 2 * cfg.z_dim, rngs=rngs)

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    x = self.conv_in(x, caches)
    for block in self.down_blocks:
      x = block(x, caches)
    x = self.mid_block(x, caches)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), caches)


class UpBlock(nnx.Module):

  def __init__(self, cin: int, cout: int, num_res_blocks: int, mode: str | None, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs)
                             for i in range(num_res_blocks + 1)])
    self.upsampler = Resample(cout, mode, rngs=rngs) if mode else None

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    for resnet in self.resnets:
      x = resnet(x, caches)
    return x if self.upsampler is None else self.upsampler(x, caches)


class Decoder(nnx.Module):

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    blocks = decoder_blocks(cfg)
    self.conv_in = CausalConv3d(cfg.z_dim, blocks[0][0], rngs=rngs)
    self.mid_block = MidBlock(blocks[0][0], rngs=rngs)
    self.up_blocks = nnx.List([UpBlock(cin, cout, cfg.num_res_blocks, mode, rngs=rngs)
                               for cin, cout, mode in blocks])
    self.norm_out = RMSNorm(blocks[-1][1])
    self.conv_out = CausalConv3d(blocks[-1][1], cfg.out_channels, rngs=rngs)

  def __call__(self, x: jax.Array, caches: _Caches) -> jax.Array:
    x = self.mid_block(self.conv_in(x, caches), caches)
    for block in self.up_blocks:
      x = block(x, caches)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), caches)


def _causal_chunks(layer, x: jax.Array, chunk: int | None) -> jax.Array:
  """Runs `layer(x_chunk, caches)` over frame 0 alone, then over chunks of `chunk` frames
  (a `lax.scan` carrying the caches; a shorter last chunk after it), or over all the other
  frames at once when `chunk` is None. Returns the outputs concatenated in time."""

  def step(xc, old):
    caches = _Caches(old)
    return layer(xc, caches), caches.new

  out, cache = step(x[:, :1], None)
  rest = x[:, 1:]
  n = rest.shape[1]
  if n == 0:
    return out
  chunk = n if chunk is None else min(chunk, n)
  k, tail = divmod(n, chunk)
  outs = [out]
  if k == 1:
    y, cache = step(rest[:, :chunk], cache)
    outs.append(y)
  else:
    xs = jnp.moveaxis(rest[:, :k * chunk].reshape(x.shape[0], k, chunk, *x.shape[2:]), 1, 0)
    cache, ys = jax.lax.scan(lambda c, xc: step(xc, c)[::-1], cache, xs)
    outs.append(jnp.moveaxis(ys, 0, 1).reshape(x.shape[0], -1, *ys.shape[3:]))
  if tail:
    outs.append(step(rest[:, k * chunk:], cache)[0])
  return jnp.concatenate(outs, axis=1)


class WanVAE(nnx.Module):
  """The parameters and the two passes; latents normalised (see the module docstring)."""

  def __init__(self, config: WanVAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs=rngs)
    self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, (1, 1, 1), rngs=rngs)
    self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, (1, 1, 1), rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)

  def _stats(self, dtype):
    c = self.config
    return jnp.asarray(c.latents_mean, dtype), jnp.asarray(c.latents_std, dtype)

  def encode(self, video: jax.Array, chunk: int | None = 1) -> jax.Array:
    """(B, 1 + 4k, H, W, 3) in [-1, 1] -> normalised posterior mean (B, 1 + k, h, w, z_dim).
    `chunk`: latent frames per scan step (4x as many pixel frames); None: one pass."""
    step = None if chunk is None else chunk * self.config.temporal_factor
    moments = self.quant_conv.valid(_causal_chunks(self.encoder, video, step))
    mean, std = self._stats(moments.dtype)
    return (moments[..., :self.config.z_dim] - mean) / std

  def decode(self, latents: jax.Array, chunk: int | None = 1) -> jax.Array:
    """Normalised (B, 1 + k, h, w, z_dim) -> (B, 1 + 4k, H, W, 3) clipped to [-1, 1].
    `chunk`: latent frames per scan step; None: one pass."""
    return jnp.clip(self.decode_unclipped(latents, chunk), -1.0, 1.0)

  def decode_unclipped(self, latents: jax.Array, chunk: int | None = 1) -> jax.Array:
    """`decode` before the clip (tiles are blended unclipped, as in diffusers)."""
    mean, std = self._stats(latents.dtype)
    z = self.post_quant_conv.valid(latents * std + mean)
    return _causal_chunks(self.decoder, z, chunk)


class WanVideoAutoencoder:
  """Our video-autoencoder interface (models/autoencoders/__init__.py) over a `WanVAE`.

  Holds the module split into `graphdef` and `params`: `encode`/`decode` merge them inside
  the traced function, so they work under jit; pass `params=` to feed the weights as a jit
  argument instead of closing over them (closed-over arrays become compile-time constants).
  No gradient flows into the autoencoder.

  `tile_size`, `tile_stride`: (height, width) in pixels of diffusers' spatial tiles
  (tile_sample_min_*, tile_sample_stride_*); (0, 0) = no tiling. Tiling applies only to
  inputs larger than the tile, as in diffusers."""

  def __init__(self, vae: WanVAE, encode_chunk: int | None = 1, decode_chunk: int | None = 1,
               tile_size: tuple[int, int] = (0, 0), tile_stride: tuple[int, int] = (0, 0),
               dtype=jnp.float32):
    cfg = vae.config
    tiling.check_tiling(tile_size, tile_stride, cfg.spatial_factor)
    self.graphdef, self.params = nnx.split(vae)
    # dtype: weights and compute (bf16: tests/models/test_wan_vae.py states the tolerance);
    # inputs and outputs stay float32.
    self.dtype = dtype
    self.params = cast_params(self.params, dtype)
    self.encode_chunk, self.decode_chunk = encode_chunk, decode_chunk
    self.tile_size, self.tile_stride = tuple(tile_size), tuple(tile_stride)
    self.latent_channels = cfg.z_dim
    self.temporal_factor = cfg.temporal_factor
    self.spatial_factor = cfg.spatial_factor

  def latent_frames(self, num_frames: int) -> int:
    t = self.temporal_factor
    if num_frames < 1 or (num_frames - 1) % t:
      raise ValueError(f"{num_frames} frames: the Wan VAE takes 1 + {t}k frames")
    return 1 + (num_frames - 1) // t

  def latent_hw(self, height: int, width: int) -> tuple[int, int]:
    s = self.spatial_factor
    if height % s or width % s:
      raise ValueError(f"{height}x{width} does not divide by the spatial factor {s}")
    return height // s, width // s

  def pixel_shape(self, latent_shape) -> tuple[int, int, int]:
    """(frames, height, width) of the clip a (T, h, w, ...) latent decodes to."""
    t, h, w = latent_shape[:3]
    return 1 + self.temporal_factor * (t - 1), h * self.spatial_factor, w * self.spatial_factor

  def module(self, params=None) -> WanVAE:
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def uses_tiles(self, height: int, width: int) -> bool:
    """Whether a (height, width) pixel frame is cut into tiles."""
    th, tw = self.tile_size
    return self.tile_size != (0, 0) and (height > th or width > tw)

  def encode(self, video: jax.Array, params=None) -> jax.Array:
    self.latent_frames(video.shape[1])
    self.latent_hw(*video.shape[2:4])
    vae, video = self.module(params), video.astype(self.dtype)
    encode = lambda x: vae.encode(x, self.encode_chunk).astype(jnp.float32)
    if self.uses_tiles(*video.shape[2:4]):
      # blending normalised latents equals normalising blended ones: the blend is convex
      z = tiling.tiled_encode(encode, video, self.tile_size, self.tile_stride,
                              self.spatial_factor)
    else:
      z = encode(video)
    return jax.lax.stop_gradient(z)

  def decode(self, latents: jax.Array, params=None) -> jax.Array:
    vae, latents = self.module(params), latents.astype(self.dtype)
    s = self.spatial_factor
    if self.uses_tiles(latents.shape[2] * s, latents.shape[3] * s):
      x = tiling.tiled_decode(
          lambda z: vae.decode_unclipped(z, self.decode_chunk).astype(jnp.float32), latents,
          self.tile_size, self.tile_stride, s)
      x = jnp.clip(x, -1.0, 1.0)
    else:
      x = vae.decode(latents, self.decode_chunk).astype(jnp.float32)
    return jax.lax.stop_gradient(x)
