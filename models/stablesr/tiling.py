"""The latent canvas tiler of StableSR's canvas scripts (ddpm.py `p_mean_variance_canvas` l.2567).

The UNet and the struct encoder run on latent tiles of input_size/8 px; their outputs (ε or v)
are blended with Gaussian weights into one full-size prediction, from which the sampler step
runs on the whole latent as usual. Only the model output is tiled, never the step.

Two official details are kept on purpose:
- the grid (l.2580-2606): n tiles, n the least with (n−1)·stride + tile ≥ side, stride =
  tile − overlap; tiles 0…n−2 at k·stride and the last one moved flush with the far edge.
  Because n is counted before that move, the last two tiles can nearly coincide (side 100,
  tile 64, overlap 32: offsets 0, 32, 36). Tiles run column by column (x outer, y inner) as
  the official loops do, which fixes the order of the overlapping sums;
- the weights (`_gaussian_weights`, l.2960): the x midpoint is (T−1)/2 but the y midpoint is
  T/2, so each tile's weight peaks half a pixel below its centre. It looks like a slip, but
  the official canvas results were made with it and it changes every blended value.

Unlike the official loop, which only works for one image (it splits the tile batch back per
sample), every tile here keeps the batch dimension, so a batch of latents blends item by item.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_WEIGHT_VARIANCE = 0.01  # _gaussian_weights, var

TileSlices = tuple[slice, slice]  # (rows, columns), for latent[..., rows, columns]


def tile_offsets(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile start offsets along one side: k·(tile − overlap), the last one flush with the end (l.2580-2606)."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, {tile_size}), not {overlap}")
    if length < tile_size:
        raise ValueError(f"latent side {length} is smaller than the tile size {tile_size}")
    stride = tile_size - overlap
    count = 1
    while (count - 1) * stride + tile_size < length:
        count += 1
    return [k * stride for k in range(count - 1)] + [length - tile_size]


def tile_slices(latent_shape: Sequence[int], tile_size: int, overlap: int) -> list[TileSlices]:
    """The tiles covering a [B, C, H, W] latent, x offset outer and y offset inner, as the official loops run."""
    if len(latent_shape) != 4:
        raise ValueError(f"expected a [B, C, H, W] latent shape, got {tuple(latent_shape)}")
    height, width = latent_shape[-2:]
    rows = tile_offsets(height, tile_size, overlap)
    columns = tile_offsets(width, tile_size, overlap)
    return [
        (slice(y, y + tile_size), slice(x, x + tile_size))
        for x in columns
        for y in rows
    ]


def gaussian_tile_weights(
    tile_size: int, device: torch.device | str | None = None, width: int | None = None
) -> torch.Tensor:
    """[T, T] float64 blending weights, weights[y, x] = g_y(y)·g_x(x) (`_gaussian_weights`, l.2960-2976).

    g(p) = exp(−(p − m)² / T² / (2·0.01)) / √(2π·0.01), with m = (T−1)/2 along x but m = T/2
    along y (the official asymmetry). `width` gives a [T, width] tile (pixel patches at an image
    edge), each axis then normalised by its own length.
    """

    def profile(length: int, midpoint: float) -> torch.Tensor:
        p = torch.arange(length, dtype=torch.float64, device=device)
        return torch.exp(-((p - midpoint) ** 2) / (length * length) / (2 * _WEIGHT_VARIANCE)) / math.sqrt(
            2 * math.pi * _WEIGHT_VARIANCE
        )

    width = tile_size if width is None else width
    return torch.outer(profile(tile_size, tile_size / 2), profile(width, (width - 1) / 2))


def stitch_tiles(
    tile_outputs: Sequence[torch.Tensor],
    slices: Sequence[TileSlices],
    latent_shape: Sequence[int],
    weights: torch.Tensor,
) -> torch.Tensor:
    """The weighted average of per-tile outputs [B, C, T, T] over the full latent (l.2657-2683).

    As in the official code, products are formed with the float64 weights and accumulated in
    float32, and the result is float32 whatever the tiles' dtype.
    """
    if len(tile_outputs) != len(slices):
        raise ValueError(f"{len(tile_outputs)} tile outputs for {len(slices)} tiles")
    device = tile_outputs[0].device
    weights = weights.to(device)
    total = torch.zeros(tuple(latent_shape), dtype=torch.float32, device=device)
    contributions = torch.zeros_like(total)
    for output, (rows, columns) in zip(tile_outputs, slices):
        total[..., rows, columns] += output * weights
        contributions[..., rows, columns] += weights
    return total / contributions
