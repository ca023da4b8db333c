"""Spatial tiling for a video autoencoder, as diffusers' `AutoencoderKLWan.enable_tiling`.

The input (B, T, H, W, C) is cut into overlapping windows started every `stride` along H and
W (the last ones cut short at the border); each window runs through the whole causal pass
over time; each output tile is blended linearly into the tile above and the tile to its left
over their overlap, cropped to the output stride, and the crops are stitched. The tiles are a
Python loop over a grid fixed by the static shapes, so the whole thing traces under jit. It
bounds the memory of one pass by the tile, not the frame, at the price of seams that the
blend only softens (the mid-block attention of a tile sees only that tile).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

HW = tuple[int, int]


def check_tiling(tile: HW, stride: HW, factor: int,
                 names=("tile_height", "tile_width", "tile_stride_height", "tile_stride_width")):
  """Raises ValueError naming the field when tiling is on (a nonzero tile) and the tile or
  the stride is not a positive multiple of `factor`, or a stride exceeds its tile (it would
  leave gaps). Tiles must be on the latent grid so every window maps to whole latents."""
  if tuple(tile) == (0, 0):
    return
  for value, name in zip((*tile, *stride), names):
    if value <= 0 or value % factor:
      raise ValueError(f"{name}: {value}, need a positive multiple of the spatial factor "
                       f"{factor} when tiling is on")
  for t, s, tname, sname in zip(tile, stride, names[:2], names[2:]):
    if s > t:
      raise ValueError(f"{sname}: {s} exceeds {tname}={t}: the tiles would leave gaps")


def _blend(prev: jax.Array, tile: jax.Array, extent: int, axis: int) -> jax.Array:
  """`tile` with its first `extent` rows along `axis` faded in from the last ones of `prev`
  (weight k/extent on `tile`), diffusers' blend_v / blend_h."""
  extent = min(prev.shape[axis], tile.shape[axis], extent)
  if extent <= 0:
    return tile
  shape = [1] * tile.ndim
  shape[axis] = extent
  # weights in float64 then cast, as torch casts its Python-float factors
  w = np.arange(extent).reshape(shape) / extent
  idx = lambda start, stop: (slice(None),) * axis + (slice(start, stop),)
  head = (prev[idx(-extent, None)] * (1 - w).astype(tile.dtype)
          + tile[idx(0, extent)] * w.astype(tile.dtype))
  return jnp.concatenate([head, tile[idx(extent, None)]], axis=axis)


def tiled_map(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: HW, stride: HW,
              out_tile: HW, out_stride: HW, out_hw: HW) -> jax.Array:
  """`fn` over the (tile) windows of x's axes 2, 3 started every `stride`; its outputs, whose
  full-size tiles are `out_tile` and whose strides are `out_stride`, blended over the
  overlap out_tile - out_stride, cropped to out_stride, stitched and cut to `out_hw`."""
  blend = (out_tile[0] - out_stride[0], out_tile[1] - out_stride[1])
  rows = []
  for i in range(0, x.shape[2], stride[0]):
    row = []
    for j in range(0, x.shape[3], stride[1]):
      y = fn(x[:, :, i:i + tile[0], j:j + tile[1]])
      # the neighbours are already blended themselves: diffusers blends in place
      if rows:
        y = _blend(rows[-1][len(row)], y, blend[0], axis=2)
      if row:
        y = _blend(row[-1], y, blend[1], axis=3)
      row.append(y)
    rows.append(row)
  crop = lambda y: y[:, :, :out_stride[0], :out_stride[1]]
  out = jnp.concatenate([jnp.concatenate([crop(y) for y in row], axis=3) for row in rows],
                        axis=2)
  return out[:, :, :out_hw[0], :out_hw[1]]


def tiled_encode(encode: Callable[[jax.Array], jax.Array], video: jax.Array, tile: HW,
                 stride: HW, factor: int) -> jax.Array:
  """`encode` (pixels -> latents, `factor`x smaller in space) over pixel tiles; the latents
  blend over (tile - stride) / factor."""
  lat = lambda hw: (hw[0] // factor, hw[1] // factor)
  return tiled_map(encode, video, tile, stride, lat(tile), lat(stride), lat(video.shape[2:4]))


def tiled_decode(decode: Callable[[jax.Array], jax.Array], latents: jax.Array, tile: HW,
                 stride: HW, factor: int) -> jax.Array:
  """`decode` (latents -> pixels) over latent tiles of tile / factor every stride / factor;
  the pixels blend over tile - stride. `decode` should not clip: diffusers blends first."""
  lat = lambda hw: (hw[0] // factor, hw[1] // factor)
  out_hw = (latents.shape[2] * factor, latents.shape[3] * factor)
  return tiled_map(decode, latents, lat(tile), lat(stride), tile, stride, out_hw)
