"""Fixed sin-cos position embeddings over a token grid (MAE's, generalised to any number of axes).

Audio uses a 2-D grid (time x frequency), video a 3-D one (time x height x width). The channels
are split between the axes, each axis gets a 1-D sin-cos code of its coordinate, and the codes are
concatenated. Row 0 is the [CLS] position (zeros, as in MAE), rows 1.. follow the patch
embedding's token order (row-major over the grid).
"""
from __future__ import annotations

import torch


def sincos_1d(dim: int, coords: torch.Tensor) -> torch.Tensor:
    # coords: (M,)  ->  (M, dim): [sin(c * w_0..w_{dim/2-1}), cos(...)], w_i = 10000^(-2i/dim)
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = coords.double()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def axis_dims(dim: int, axes: int) -> list[int]:
    """Even channel counts per axis summing to dim: equal shares, the remainder to the last axis."""
    share = 2 * (dim // (2 * axes))
    return [share] * (axes - 1) + [dim - share * (axes - 1)]


def sincos_grid(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """(1 + prod(grid), dim) float32 table: a zero [CLS] row, then one row per grid cell in row-major order."""
    if dim % 2 or dim < 2 * len(grid):
        raise ValueError(f"sin-cos positions need an even dim >= {2 * len(grid)}, got {dim}")
    coords = torch.meshgrid(*[torch.arange(size) for size in grid], indexing="ij")
    codes = [sincos_1d(d, c.reshape(-1)) for d, c in zip(axis_dims(dim, len(grid)), coords)]
    table = torch.cat(codes, dim=1)  # (prod(grid), dim)
    cls = torch.zeros(1, dim, dtype=table.dtype)
    return torch.cat([cls, table], dim=0).float()

