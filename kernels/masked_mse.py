"""masked_mse: the reconstruction loss of Eq. 1 (raw targets) and Eq. 5 (the teacher's features).

    err[b, n] = mean_d (pred[b, n, d] - t[b, n, d])^2,    loss = sum(err * mask) / sum(mask)

where t is the target, or with norm_pix each target token normalised by its own statistics,
(t - mean) / sqrt(var + 1e-6) with the unbiased variance over d (the MAE convention). mask is 1
on the tokens hidden from the encoder. Computed in fp32; returns a 0-dim fp32 tensor. The Triton path
gives the target no gradient; a target that requires grad runs the reference (docs/kernels.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import expect_shape
from ._dispatch import block_size, new_output, use_triton

NORM_PIX_EPS = 1e-6
MAX_TRITON_DIM = 16384  # one program holds a whole token


def norm_pix_stats(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) -> each token's mean and sqrt(unbiased variance + eps), (B, N, 1) each: what norm_pix divides by."""
    target = target.float()
    return target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()


def masked_mse_reference(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    # pred, target: (B, N, D), mask: (B, N)  ->  ()
    target = target.float()
    if norm_pix:
        mean, std = norm_pix_stats(target)
        target = (target - mean) / std
    err = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.float()
    return (err * mask).sum() / mask.sum()


@triton.jit
def _token_residual(
    pred_ptr,
    target_ptr,
    row,
    N,
    D,
    stride_pb,
    stride_pn,
    stride_tb,
    stride_tn,
    weight,
    NORM_PIX: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """pred - (normalised) target for token `row` (b * N + n); zeros past D, and everywhere when weight is 0
    (the token is not loaded)."""
    b, n = row // N, row % N
    cols = tl.arange(0, BLOCK_D)
    # compared as a block: Triton's interpreter cannot AND a block with a scalar comparison
    inside = (cols < D) & (tl.full([BLOCK_D], 0.0, tl.float32) != weight)
    pred = tl.load(pred_ptr + b.to(tl.int64) * stride_pb + n * stride_pn + cols, mask=inside, other=0.0).to(tl.float32)
    target = tl.load(target_ptr + b.to(tl.int64) * stride_tb + n * stride_tn + cols, mask=inside, other=0.0).to(
        tl.float32
    )
    if NORM_PIX:
        mean = tl.sum(target, axis=0) / D
        centred = tl.where(inside, target - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / (D - 1)
        target = centred / tl.sqrt(var + EPS)
    return tl.where(inside, pred - target, 0.0), cols


@triton.jit
def _mse_fwd(
    pred_ptr,
    target_ptr,
    mask_ptr,
    err_ptr,
    N,
    D,
    stride_pb,
    stride_pn,
    stride_tb,
    stride_tn,
    NORM_PIX: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    weight = tl.load(mask_ptr + row).to(tl.float32)
    residual, cols = _token_residual(
        pred_ptr, target_ptr, row, N, D, stride_pb, stride_pn, stride_tb, stride_tn, weight, NORM_PIX, EPS, BLOCK_D
    )
    tl.store(err_ptr + row, weight * tl.sum(residual * residual, axis=0) / D)


@triton.jit
def _mse_bwd(
    pred_ptr,
    target_ptr,
    mask_ptr,
    scale_ptr,
    grad_ptr,
    N,
    D,
    stride_pb,
    stride_pn,
    stride_tb,
    stride_tn,
    NORM_PIX: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    weight = tl.load(mask_ptr + row).to(tl.float32)
    residual, cols = _token_residual(
        pred_ptr, target_ptr, row, N, D, stride_pb, stride_pn, stride_tb, stride_tn, weight, NORM_PIX, EPS, BLOCK_D
    )
    scale = tl.load(scale_ptr)  # d loss / d sum(err * mask) = grad_output / sum(mask)
    grad = residual * (2.0 * weight * scale / D)
    tl.store(grad_ptr + row.to(tl.int64) * D + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < D)


def _rows_last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class MaskedMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, mask, norm_pix):
        batch, tokens, dim = pred.shape
        pred, target = _rows_last_dim_contiguous(pred), _rows_last_dim_contiguous(target)
        mask = mask.contiguous().float()
        err = new_output((batch * tokens,), torch.float32, pred.device)
        strides = (pred.stride(0), pred.stride(1), target.stride(0), target.stride(1))
        _mse_fwd[(batch * tokens,)](
            pred,
            target,
            mask,
            err,
            tokens,
            dim,
            *strides,
            NORM_PIX=norm_pix,
            EPS=NORM_PIX_EPS,
            BLOCK_D=block_size(dim, MAX_TRITON_DIM),
        )
        mask_sum = mask.sum()
        ctx.save_for_backward(pred, target, mask, mask_sum)
        ctx.norm_pix = norm_pix
        return err.sum() / mask_sum

    @staticmethod
    def backward(ctx, grad_loss):
        pred, target, mask, mask_sum = ctx.saved_tensors
        batch, tokens, dim = pred.shape
        grad = new_output((batch, tokens, dim), pred.dtype, pred.device)
        scale = (grad_loss.float() / mask_sum).reshape(1)
        strides = (pred.stride(0), pred.stride(1), target.stride(0), target.stride(1))
        _mse_bwd[(batch * tokens,)](
            pred,
            target,
            mask,
            scale,
            grad,
            tokens,
            dim,
            *strides,
            NORM_PIX=ctx.norm_pix,
            EPS=NORM_PIX_EPS,
            BLOCK_D=block_size(dim, MAX_TRITON_DIM),
        )
        return grad, None, None, None


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """pred (B, N, D), target (B, N, D), mask (B, N) with 1 on the tokens that count."""
    if pred.dim() != 3:
        raise ValueError(f"pred: expected shape (B, N, D), got {tuple(pred.shape)}")
    expect_shape("target", target, tuple(pred.shape))
    expect_shape("mask", mask, tuple(pred.shape[:2]))
    if use_triton(pred) and not target.requires_grad and pred.shape[-1] <= MAX_TRITON_DIM:
        return MaskedMSE.apply(pred, target, mask, norm_pix)
    return masked_mse_reference(pred, target, mask, norm_pix)
