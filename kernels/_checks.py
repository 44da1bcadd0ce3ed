"""Argument checks shared by the ops: each failure names the argument, its shape and what was expected."""

from __future__ import annotations

import torch


def expect_shape(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    """`shape` holds ints, or None for any size; the number of dimensions must match."""
    ok = tensor.dim() == len(shape) and all(want is None or got == want for got, want in zip(tensor.shape, shape))
    if not ok:
        wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {wanted}, got {tuple(tensor.shape)}")


def expect_index(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected an int32 or int64 index tensor, got {tensor.dtype}")
