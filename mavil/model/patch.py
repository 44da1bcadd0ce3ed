"""Patch embedding and its inverse view, for spectrograms (2-D) and videos (3-D) alike.

A patch is a non-overlapping block (kernel = stride = patch): audio 16 x 16 over 1 x 1024 x 128
gives 64 x 8 = 512 tokens; video 2 x 16 x 16 over 3 x 8 x 224 x 224 gives 4 x 14 x 14 = 784.
`patchify` cuts the input into the same blocks in the same token order, which makes the
raw-reconstruction targets of stage 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """(B, C, *size) -> (B, N, dim) with N = prod(size / patch), tokens in row-major grid order."""

    def __init__(self, in_chans: int, input_size: tuple[int, ...], patch: tuple[int, ...], dim: int):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[len(patch)]
        self.proj = conv(in_chans, dim, kernel_size=tuple(patch), stride=tuple(patch))
        self.input_shape = (in_chans, *input_size)
        self.grid = tuple(s // p for s, p in zip(input_size, patch))
        self.num_patches = math.prod(self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"patch embedding expects input (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        # (B, dim, *grid) -> (B, N, dim), copied once so that each token's dim values are contiguous: masked_gather
        # then reads them with vector loads (a transposed view would leave it scalar loads strided by N)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *size) -> (B, N, prod(patch) * C): each token's raw values, channels last (MAE's layout)."""
    batch, chans, *size = x.shape
    grid = [s // p for s, p in zip(size, patch)]
    x = x.reshape(batch, chans, *[v for g, p in zip(grid, patch) for v in (g, p)])
    axes = len(patch)
    order = [0, *[2 + 2 * i for i in range(axes)], *[3 + 2 * i for i in range(axes)], 1]
    return x.permute(order).reshape(batch, math.prod(grid), math.prod(patch) * chans)


def unpatchify(tokens: torch.Tensor, patch: tuple[int, ...], chans: int, size: tuple[int, ...]) -> torch.Tensor:
    """Inverse of patchify: (B, N, prod(patch) * C) -> (B, C, *size)."""
    batch = tokens.shape[0]
    grid = [s // p for s, p in zip(size, patch)]
    axes = len(patch)
    x = tokens.reshape(batch, *grid, *patch, chans)
    order = [0, 1 + 2 * axes, *[v for i in range(axes) for v in (1 + i, 1 + axes + i)]]
    return x.permute(order).reshape(batch, chans, *size)
