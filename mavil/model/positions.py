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


def mae_sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE's fixed 2-D table (`get_2d_sincos_pos_embed`, AudioMAE's `..._flexible` for non-square grids), with its
    zero [CLS] row: (1 + rows * cols, dim) float32 over a (rows, cols) grid in row-major order. Its first dim/2
    channels code the column, the last dim/2 the row (MAE builds the grid with the width first), which is the
    reverse of `sincos_grid`'s axis order: weights trained under one table need that one."""
    if dim % 4:
        raise ValueError(f"MAE's 2-D sin-cos positions need dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0).float()


def spatial_temporal(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """The "2d+t" video table over a (time, rows, cols) grid: (1 + T * rows * cols, dim) float32, [CLS] row zero.

    Token (t, r, c) gets MAE's 2-D table at (r, c) (all dim channels, exactly what ImageNet MAE was trained with)
    plus a 1-D code of t over all channels, shifted so that t = 0 adds nothing: sincos_1d(t) - sincos_1d(0), i.e.
    [sin(t w), cos(t w) - 1]. The first time slot thus carries the image positions unchanged."""
    time, rows, cols = grid
    spatial = mae_sincos_2d(dim, (rows, cols))[1:].double()  # (rows * cols, dim)
    steps = torch.arange(time)
    temporal = sincos_1d(dim, steps) - sincos_1d(dim, torch.zeros(1))  # (T, dim), row 0 zero
    table = (temporal[:, None, :] + spatial[None, :, :]).reshape(time * rows * cols, dim)
    return torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0).float()


VIDEO_POSITIONS = ("3d", "2d+t")
AUDIO_POSITIONS = ("2d", "mae")


def position_table(scheme: str, dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """An encoder's fixed positions by the config's scheme: "3d" / "2d" (`sincos_grid`, the channels split over
    the axes in grid order), "2d+t" (`spatial_temporal`, video) or "mae" (`mae_sincos_2d`, audio)."""
    if scheme in ("3d", "2d"):
        return sincos_grid(dim, grid)
    if scheme == "2d+t" and len(grid) == 3:
        return spatial_temporal(dim, grid)
    if scheme == "mae" and len(grid) == 2:
        return mae_sincos_2d(dim, grid)
    raise ValueError(f"position scheme {scheme!r} does not apply to a {len(grid)}-D token grid")
