"""masked_mse: the reconstruction loss of Eq. 1 (raw targets) and Eq. 5 (the teacher's features).

    err[b, n] = mean_d (pred[b, n, d] - t[b, n, d])^2,    loss = sum(err * mask) / sum(mask)

where t is the target, or with norm_pix each target token normalised by its own statistics,
(t - mean) / sqrt(var + 1e-6) with the unbiased variance over d (the MAE convention). mask is 1
on the tokens hidden from the encoder. Computed in fp32; returns a 0-dim fp32 tensor.
"""
from __future__ import annotations

import torch

from ._checks import expect_shape

NORM_PIX_EPS = 1e-6


def masked_mse_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    # pred, target: (B, N, D), mask: (B, N)  ->  ()
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS).sqrt()
    err = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.float()
    return (err * mask).sum() / mask.sum()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """pred (B, N, D), target (B, N, D), mask (B, N) with 1 on the tokens that count."""
    if pred.dim() != 3:
        raise ValueError(f"pred: expected shape (B, N, D), got {tuple(pred.shape)}")
    expect_shape("target", target, tuple(pred.shape))
    expect_shape("mask", mask, tuple(pred.shape[:2]))
    return masked_mse_reference(pred, target, mask, norm_pix)
