"""Analytic per-device memory of one training step, for machines XLA cannot compile for here
(GPU nodes). The AOT tool (tools/aot.py) gives XLA's own figure for TPU topologies; this model
is checked against it (README, "Memory").

Assumes the intended FSDP layout: the train state sharded as the rules shard `embed` (by
default `fsdp` x `sequence`) times `tensor`, the batch over `data` x `fsdp`, one layer's
weights gathered at a time. Counts, per device:
  state        params + Adam mu, nu + EMA in `model.param_dtype`, and the gradients (a
               LoRA run: of its adapters; `base` then counts its frozen weights)
  layer        one layer's weights gathered in the compute dtype and their gradients before
               the reduce-scatter
  saved        what the remat policy keeps for the backward pass, per layer, times the layers
  working      one layer's recomputed activations in its backward pass (f32 at worst)
  attention    the scores of the largest attention of a layer (logits f32, probabilities,
               their gradients: ATTN_BYTES per score). dot_product materialises all S x S of
               them per head (so does ulysses with `model.sp_kernel=dot_product`, its heads
               split over `sequence`); ring and the other Ulysses kernels hold one block of
               scores per head (blockwise: BLOCK x BLOCK); cudnn / splash count 0
  inputs       uint8 pixels and their f32 normalisation, waveforms and the latents / noise
               made from them in the step
  frozen       the frozen VAEs' and text encoder's weights, sharded by their logical axes
               like the model's (the VAEs have none: replicated); published architectures
               where no converted folder is here (models/frozen.py)
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from skyreels_jax.config import (DTYPES, abstract_model, derive, mesh_shape,
                                 num_audio_samples)
from skyreels_jax.models.attention import blockwise
from skyreels_jax.parallel.mesh import fit_to_shape, logical_to_mesh, rules
from skyreels_jax.tasks.examples import make_codecs, reference_slots
from skyreels_jax.weights import lora

# The constants below are fitted to the TPU compiler (tools/aot.py, libtpu 0.0.42.1, v5p):
# eleven long-clip compiles of `small` and hv13b with FSDP and with Ulysses (480p and 720p,
# 4-63 s; benchmarks/results/max_sequence.jsonl), which the model meets from 0.4% to 2.4%
# over (and seven later hv13b Ulysses compiles, 480p 49-52 s and 720p 21-23 s, not fitted,
# 0.4-0.7% over), and three 2 s compiles (tests/perf/test_memory.py; 0-8% over).
#
# Activations that each remat policy keeps per layer, in d-wide bf16 vectors per token of
# the layer's input: 2, the scan carry and one more vector XLA keeps (fitted: the long clips
# grow by two per layer, 1.93 free), plus what the policy saves. save_dots: fitted at 2 s
# (the weight matmul outputs are ~14 d-wide per token, kept in f32); save_named keeps the
# three tagged outputs; none (not fitted) everything of the layer.
SAVED_PER_TOKEN = {"full": 2.0, "offload_named": 2.0, "save_named": 5.0, "save_dots": 32.0,
                   "none": 60.0}
# Activations of one layer being differentiated, in d-wide f32 vectors per token. Ulysses'
# all-to-all buffers (all S tokens of H / n heads on each device) are the same bytes as the
# sequence-sharded q, k, v they replace: no term of their own (its compile agrees).
WORKING_PER_TOKEN = 23.0
# Bytes per attention score live at the peak: f32 logits and their f32 gradients, less what
# XLA fuses away (fitted at 2 s with dot_product attention).
ATTN_BYTES = 7


def _attention_scores(impl: str, heads: int, sizes: dict, lengths,
                      sp_kernel: str = "auto") -> float:
  """Scores held at once by the largest attention of a layer (per example): joint video
  [tokens; text], joint audio, or audio<->video cross-attention."""
  video, audio, v, a = lengths
  heads = heads / sizes["tensor"]
  if impl == "dot_product":        # all of them
    return heads * max(video ** 2, audio ** 2, 2 * v * a)
  if impl == "ulysses" and sp_kernel == "dot_product":   # all S, heads split over `sequence`
    return heads / sizes["sequence"] * max(video ** 2, audio ** 2, 2 * v * a)
  if impl in ("ring", "blockwise"):  # one block per head at a time (custom VJPs)
    return heads * blockwise.BLOCK ** 2
  return 0.0                       # cudnn / splash / Ulysses on them: O(S) memory


def _param_counts(config) -> tuple[int, int]:
  """(all parameters, parameters of the largest joint layer)."""
  params = nnx.state(abstract_model(config), nnx.Param)
  total, layer = 0, {"dual_layers": 0, "single_layers": 0}
  for path, leaf in nnx.to_flat_state(params):
    n = math.prod(leaf.shape)
    total += n
    for stack in layer:
      if stack in [str(p) for p in path]:
        layer[stack] += n // leaf.shape[0]
  return total, max(layer.values())


def _ways(names, config, sizes: dict, shape=None) -> int:
  """Into how many shards the config's logical rules split an array with logical axes
  `names` (None: replicated) and, when given, `shape` (mesh.fit_to_shape)."""
  if not names:
    return 1
  spec = logical_to_mesh(names, rules(config))
  ways = 1
  for axes in (spec if shape is None else fit_to_shape(spec, shape, sizes)):
    for a in ((axes,) if isinstance(axes, str) else tuple(axes or ())):
      ways *= sizes[a]
  return ways


def _frozen_bytes(config, sizes: dict) -> float:
  """Per-device bytes of the frozen weights under the config's logical rules."""
  codecs, _ = make_codecs(config, abstract=True)
  total = 0.0
  leaves = jax.tree.leaves(codecs.frozen_params(), is_leaf=lambda x: isinstance(x, nnx.Variable))
  for leaf in leaves:
    names = getattr(leaf, "out_sharding", None) if isinstance(leaf, nnx.Variable) else None
    total += (math.prod(leaf.shape) * leaf.dtype.itemsize
              / _ways(names, config, sizes, leaf.shape))
  return total


def train_memory_bytes(config, num_devices: int) -> dict[str, float]:
  """Per-device bytes of one train step by component, and their `total`."""
  geom, mcfg = derive(config, abstract=True)
  m, d = config.model, config.data
  sizes = mesh_shape(config.mesh, num_devices)
  dp = sizes["data"] * sizes["fsdp"]
  shard = _ways(("embed",), config, sizes) * sizes["tensor"]   # the weights' shards
  seq = sizes["sequence"]
  b = d.batch_size / dp                          # examples per device
  pb = DTYPES[m.param_dtype].dtype.itemsize
  cb = DTYPES[m.dtype].dtype.itemsize
  total_params, layer_params = _param_counts(config)

  ref_frames, ref_audio = reference_slots(config)
  sv = geom.video_tokens + ref_frames * geom.video_tokens // max(geom.video_grid[0], 1)
  sa = geom.audio_tokens + ref_audio // m.audio_patch_size if mcfg.use_audio else 0
  length = config.text.max_length
  tokens = sv + length + ((sa + length) if mcfg.use_audio else 0)  # both branches' carries
  width, heads, layers = m.width, m.num_heads, m.num_dual_blocks + m.num_single_blocks

  out = {}
  lo = config.train.lora
  if lo.rank > 0:
    # LoRA: the adapters' params, mu, nu, EMA and gradients; the base frozen in its dtype,
    # sharded like the params (the step folds the adapters into a compute-dtype copy of one
    # layer at a time, which `layer` counts).
    base = nnx.state(abstract_model(config), nnx.Param)
    out["state"] = lora.count(lora.abstract_adapters(base, lo.targets, lo.rank)) * pb * 5
    out["state"] /= shard
    out["base"] = total_params * DTYPES[lo.base_dtype].dtype.itemsize / shard
  else:
    out["state"] = total_params * pb * 5 / shard     # params, mu, nu, EMA, gradients
  out["layer"] = layer_params * (cb + pb) / sizes["tensor"]
  out["saved"] = b * layers * SAVED_PER_TOKEN[m.remat] * tokens * width * 2 / seq
  out["working"] = b * WORKING_PER_TOKEN * tokens * width * 4 / seq
  out["attention"] = b * _attention_scores(config.attention, heads, sizes,
                                           (sv + length, sa + length, sv, sa),
                                           m.get("sp_kernel", "auto")) * ATTN_BYTES
  if m.remat == "none":                           # every layer keeps its probabilities
    out["attention"] *= 1 + layers * cb / ATTN_BYTES
  # The clip arrives as uint8 and is normalised to f32 on the device (tasks/examples.py); its
  # latents, noise and noisy latents are ~100x smaller. The waveform: f32 input, latent,
  # noise, noisy.
  pixels = d.num_frames * d.height * d.width * 3
  out["inputs"] = b * (pixels * (1 + 4) + num_audio_samples(d) * d.audio_channels * 4 * 4)
  out["frozen"] = _frozen_bytes(config, sizes)
  out["total"] = sum(out.values())
  return out
