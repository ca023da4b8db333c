"""Stable Audio Open's waveform VAE (diffusers `AutoencoderOobleck`) in NNX, channels-last.

Strided 1D convolutions with Snake activations compress a waveform by `hop` = the product of
`downsampling_ratios` (2048 for the published [2, 4, 4, 8, 8]): (B, S, audio_channels) at
44.1 kHz becomes (B, S / hop, latent_channels) latents (64 published, i.e. ~21.5 latent frames
per second). Weights load from diffusers through tools/oobleck_mapping.py.

Weight norm is folded at import: diffusers keeps every convolution as `weight_g` and
`weight_v` (w = g * v / |v|); the VAE is frozen here, so one plain kernel, computed once in
`fold_weight_norm`, gives the same numbers with no per-call normalisation.

Latents are the RAW posterior mean (the first half of the encoder's output channels), as
diffusers' Stable Audio pipeline uses them: no scaling or normalisation.

Not done: diffusers' optional time tiling (`enable_tiling`: overlapping chunks, not
bit-identical to one pass); sampling from the posterior (training the VAE is out of scope).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from skyreels_jax.models.autoencoders import cast_params


@dataclasses.dataclass(frozen=True)
class OobleckConfig:
  """diffusers' `AutoencoderOobleck` config (defaults = the published stable-audio-open-1.0
  VAE); see tools/oobleck_mapping.config_from_diffusers."""
  encoder_hidden_size: int = 128
  downsampling_ratios: tuple[int, ...] = (2, 4, 4, 8, 8)
  channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
  decoder_channels: int = 128
  decoder_input_channels: int = 64
  audio_channels: int = 2
  sampling_rate: int = 44100

  def __post_init__(self):
    if len(self.channel_multiples) != len(self.downsampling_ratios):
      # diffusers indexes one multiple per stride and builds the bottleneck from the last.
      raise ValueError(f"channel_multiples has {len(self.channel_multiples)} entries, "
                       f"downsampling_ratios {len(self.downsampling_ratios)}: need one each")
    odd = [r for r in self.downsampling_ratios if r < 2 or r % 2]
    if odd:
      # kernel 2r, padding ceil(r/2): only even r maps length L*r <-> L exactly both ways.
      raise ValueError(f"downsampling_ratios {list(self.downsampling_ratios)}: {odd} are not "
                       "even; diffusers' convolutions then change the length by a sample")
    if self.encoder_hidden_size % 2:
      raise ValueError(f"encoder_hidden_size={self.encoder_hidden_size} must be even: its "
                       "output channels are the posterior's mean and scale halves")
    if self.encoder_hidden_size // 2 != self.decoder_input_channels:
      raise ValueError(f"decoder_input_channels={self.decoder_input_channels} must be "
                       f"encoder_hidden_size / 2 = {self.encoder_hidden_size // 2} (the "
                       "latent channels)")

  @property
  def hop(self) -> int:
    return math.prod(self.downsampling_ratios)

  @property
  def latent_channels(self) -> int:
    return self.decoder_input_channels


def _kernel(rngs: nnx.Rngs, shape) -> nnx.Param:
  return nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape, jnp.float32))


class Conv1d(nnx.Module):
  """A weight-normalised torch Conv1d with the norm folded in: kernel (k, in, out)."""

  def __init__(self, cin: int, cout: int, kernel_size: int, *, stride: int = 1,
               dilation: int = 1, padding: int = 0, bias: bool = True, rngs: nnx.Rngs):
    self.stride, self.dilation, self.padding = stride, dilation, padding
    self.kernel = _kernel(rngs, (kernel_size, cin, cout))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype), (self.stride,),
                                     [(self.padding, self.padding)],
                                     rhs_dilation=(self.dilation,),
                                     dimension_numbers=("NWC", "WIO", "NWC"),
                                     preferred_element_type=jnp.float32)  # bf16: fp32 sums
    return (y if self.bias is None else y + self.bias[...]).astype(x.dtype)


class ConvTranspose1d(nnx.Module):
  """A weight-normalised torch ConvTranspose1d, folded: kernel (k, in, out), unflipped (torch's
  (in, out, k) moved axis). Output length (L - 1) * stride - 2 * padding + k, as torch: a
  stride-1 convolution of the input dilated by `stride`, with the kernel flipped in time."""

  def __init__(self, cin: int, cout: int, kernel_size: int, *, stride: int, padding: int,
               rngs: nnx.Rngs):
    self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
    self.kernel = _kernel(rngs, (kernel_size, cin, cout))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    edge = self.kernel_size - 1 - self.padding
    y = jax.lax.conv_general_dilated(x, self.kernel[...][::-1].astype(x.dtype), (1,),
                                     [(edge, edge)], lhs_dilation=(self.stride,),
                                     dimension_numbers=("NWC", "WIO", "NWC"),
                                     preferred_element_type=jnp.float32)
    return (y + self.bias[...]).astype(x.dtype)


class Snake1d(nnx.Module):
  """x + sin(a x)^2 / (b + 1e-9), per channel. `alpha`, `beta` hold log a, log b as in
  diffusers (logscale=True, the only setting its models use), so they load unchanged."""

  def __init__(self, dim: int):
    self.alpha = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.beta = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = jnp.exp(self.alpha[...]).astype(x.dtype)
    beta = jnp.exp(self.beta[...]).astype(x.dtype)
    return x + jnp.reciprocal(beta + 1e-9) * jnp.square(jnp.sin(alpha * x))


class ResidualUnit(nnx.Module):
  """Snake, dilated 7-tap conv, Snake, 1x1 conv, plus the input; 'same' padding, so the
  length is kept (diffusers' crop of the residual never triggers)."""

  def __init__(self, dim: int, dilation: int, *, rngs: nnx.Rngs):
    self.snake1 = Snake1d(dim)
    self.conv1 = Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation, rngs=rngs)
    self.snake2 = Snake1d(dim)
    self.conv2 = Conv1d(dim, dim, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nnx.Module):
  """Three residual units (dilations 1, 3, 9), Snake, then a strided conv: length / stride."""

  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.res_unit1 = ResidualUnit(cin, 1, rngs=rngs)
    self.res_unit2 = ResidualUnit(cin, 3, rngs=rngs)
    self.res_unit3 = ResidualUnit(cin, 9, rngs=rngs)
    self.snake1 = Snake1d(cin)
    self.conv1 = Conv1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                        rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
    return self.conv1(self.snake1(x))


class DecoderBlock(nnx.Module):
  """Snake, a transposed conv (length * stride), then three residual units."""

  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.snake1 = Snake1d(cin)
    self.conv_t1 = ConvTranspose1d(cin, cout, 2 * stride, stride=stride,
                                   padding=math.ceil(stride / 2), rngs=rngs)
    self.res_unit1 = ResidualUnit(cout, 1, rngs=rngs)
    self.res_unit2 = ResidualUnit(cout, 3, rngs=rngs)
    self.res_unit3 = ResidualUnit(cout, 9, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_t1(self.snake1(x))
    return self.res_unit3(self.res_unit2(self.res_unit1(x)))


def encoder_dims(cfg: OobleckConfig) -> list[tuple[int, int, int]]:
  """(in, out, stride) of each encoder block, in diffusers' order (shared with the mapping)."""
  mult = (1, *cfg.channel_multiples)
  h = cfg.encoder_hidden_size
  return [(h * mult[i], h * mult[i + 1], s) for i, s in enumerate(cfg.downsampling_ratios)]


def decoder_dims(cfg: OobleckConfig) -> list[tuple[int, int, int]]:
  """(in, out, stride) of each decoder block: the encoder's strides and widths reversed."""
  mult = (1, *cfg.channel_multiples)
  c, n = cfg.decoder_channels, len(cfg.downsampling_ratios)
  return [(c * mult[n - i], c * mult[n - i - 1], s)
          for i, s in enumerate(cfg.downsampling_ratios[::-1])]


class Encoder(nnx.Module):

  def __init__(self, cfg: OobleckConfig, *, rngs: nnx.Rngs):
    h = cfg.encoder_hidden_size
    self.conv1 = Conv1d(cfg.audio_channels, h, 7, padding=3, rngs=rngs)
    self.block = nnx.List([EncoderBlock(cin, cout, s, rngs=rngs)
                           for cin, cout, s in encoder_dims(cfg)])
    d_model = h * cfg.channel_multiples[-1]
    self.snake1 = Snake1d(d_model)
    self.conv2 = Conv1d(d_model, h, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv1(x)
    for block in self.block:
      x = block(x)
    return self.conv2(self.snake1(x))


class Decoder(nnx.Module):

  def __init__(self, cfg: OobleckConfig, *, rngs: nnx.Rngs):
    c = cfg.decoder_channels
    self.conv1 = Conv1d(cfg.decoder_input_channels, c * cfg.channel_multiples[-1], 7,
                        padding=3, rngs=rngs)
    self.block = nnx.List([DecoderBlock(cin, cout, s, rngs=rngs)
                           for cin, cout, s in decoder_dims(cfg)])
    self.snake1 = Snake1d(c)
    self.conv2 = Conv1d(c, cfg.audio_channels, 7, padding=3, bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv1(x)
    for block in self.block:
      x = block(x)
    return self.conv2(self.snake1(x))


class OobleckVAE(nnx.Module):
  """The parameters and the two passes, on exact multiples of `hop` (the wrapper pads)."""

  def __init__(self, config: OobleckConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)

  def encode(self, audio: jax.Array) -> jax.Array:
    """(B, k * hop, audio_channels) -> posterior mean (B, k, latent_channels). The encoder's
    last conv gives [mean, scale] along channels (diffusers chunks dim 1 in two)."""
    return self.encoder(audio)[..., :self.config.latent_channels]

  def decode(self, latents: jax.Array) -> jax.Array:
    """(B, k, latent_channels) -> (B, k * hop, audio_channels), unclipped (as diffusers)."""
    return self.decoder(latents)


class OobleckAudioAutoencoder:
  """Our audio-autoencoder interface (models/autoencoders/__init__.py) over an `OobleckVAE`.

  Holds the module split into `graphdef` and `params`: `encode`/`decode` merge them inside the
  traced function, so they work under jit; pass `params=` to feed the weights as a jit argument
  instead of closing over them (closed-over arrays become compile-time constants). Weights
  and compute in `dtype` (bf16: tests/models/test_oobleck_vae.py states the tolerance);
  inputs and outputs float32. No gradient flows into the autoencoder."""

  def __init__(self, vae: OobleckVAE, dtype=jnp.float32):
    cfg = vae.config
    self.graphdef, self.params = nnx.split(vae)
    self.dtype = dtype
    self.params = cast_params(self.params, dtype)
    self.hop = cfg.hop
    self.channels = cfg.audio_channels
    self.latent_channels = cfg.latent_channels
    self.sampling_rate = cfg.sampling_rate

  def latent_length(self, num_samples: int) -> int:
    """Latent frames covering `num_samples`: ceil(num_samples / hop). `encode` zero-pads the
    waveform at the end to that many hops (decode returns the padded length; callers trim)."""
    return -(-num_samples // self.hop)

  def num_samples(self, latent_length: int) -> int:
    """Samples a latent of `latent_length` frames decodes to."""
    return latent_length * self.hop

  def module(self, params=None) -> OobleckVAE:
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def encode(self, audio: jax.Array, params=None) -> jax.Array:
    """(B, S, channels) in [-1, 1] -> posterior mean (B, ceil(S / hop), latent_channels)."""
    if audio.ndim != 3 or audio.shape[-1] != self.channels:
      raise ValueError(f"audio of shape {audio.shape}: expected (B, S, {self.channels})")
    pad = self.num_samples(self.latent_length(audio.shape[1])) - audio.shape[1]
    audio = jnp.pad(audio.astype(self.dtype), ((0, 0), (0, pad), (0, 0)))
    return jax.lax.stop_gradient(self.module(params).encode(audio).astype(jnp.float32))

  def decode(self, latents: jax.Array, params=None) -> jax.Array:
    """(B, Ta, latent_channels) -> (B, Ta * hop, channels), clipped to [-1, 1]."""
    if latents.ndim != 3 or latents.shape[-1] != self.latent_channels:
      raise ValueError(f"latents of shape {latents.shape}: expected (B, Ta, "
                       f"{self.latent_channels})")
    audio = self.module(params).decode(latents.astype(self.dtype)).astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.clip(audio, -1.0, 1.0))
