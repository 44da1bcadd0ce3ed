"""masked_gather: keep each sample's visible tokens, with the position add fused.

    out[b, k] = x[b, ids_keep[b, k]] + pos[ids_keep[b, k]]        (pos optional)

The encoders call it on the patch embeddings so that adding the fixed positions and dropping the
masked tokens are one pass. Backward: x's gradient is the output gradient scattered into zeros at
ids_keep; pos's (when it requires grad) the sum of those over the batch, deterministic (no atomics).
x may be any strided (B, N, D) view, but only a last dim of stride 1 reads fast (vector loads): pass contiguous
tokens. Details: docs/kernels.md#the-triton-paths-op-by-op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import expect_index, expect_shape
from ._dispatch import block_size, new_output, use_triton


def masked_gather_reference(x: torch.Tensor, ids_keep: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    # x: (B, N, D), ids_keep: (B, K), pos: (N, D)  ->  (B, K, D)
    index = ids_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
    kept = torch.gather(x, 1, index)
    if pos is None:
        return kept
    return (kept.float() + pos.float()[ids_keep.long()]).to(x.dtype)  # one rounding, as the kernel


@triton.jit
def _gather_fwd(
    x_ptr,
    ids_ptr,
    pos_ptr,
    out_ptr,
    K,
    D,
    stride_xb,
    stride_xn,
    stride_xd,
    HAS_POS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # b * K + k
    b = row // K
    token = tl.load(ids_ptr + row).to(tl.int64)
    src = x_ptr + b.to(tl.int64) * stride_xb + token * stride_xn
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        inside = cols < D
        value = tl.load(src + cols * stride_xd, mask=inside).to(tl.float32)
        if HAS_POS:
            value += tl.load(pos_ptr + token * D + cols, mask=inside).to(tl.float32)
        tl.store(out_ptr + row.to(tl.int64) * D + cols, value.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _gather_bwd(
    grad_out_ptr, rank_ptr, grad_x_ptr, grad_pos_ptr, B, N, K, D, HAS_POS_GRAD: tl.constexpr, BLOCK_D: tl.constexpr
):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = cols < D
    pos_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for b in range(B):
        rank = tl.load(rank_ptr + b * N + token)  # where token sits among the kept, -1 if masked
        kept = rank >= 0
        src = grad_out_ptr + (b * K + tl.where(kept, rank, 0)).to(tl.int64) * D
        grad = tl.load(src + cols, mask=inside & kept, other=0.0).to(tl.float32)
        tl.store(
            grad_x_ptr + (b * N + token).to(tl.int64) * D + cols, grad.to(grad_x_ptr.dtype.element_ty), mask=inside
        )
        if HAS_POS_GRAD:
            pos_acc += grad
    if HAS_POS_GRAD:
        tl.store(grad_pos_ptr + token * D + cols, pos_acc.to(grad_pos_ptr.dtype.element_ty), mask=inside)


def kept_rank(ids_keep: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K) kept ids -> (B, N) int32: each token's position in ids_keep, -1 where it was not kept."""
    batch, keep = ids_keep.shape
    rank = torch.full((batch, tokens), -1, dtype=torch.int32, device=ids_keep.device)
    order = torch.arange(keep, dtype=torch.int32, device=ids_keep.device).expand(batch, keep)
    return rank.scatter_(1, ids_keep.long(), order)


class MaskedGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids_keep, pos):
        batch, tokens, dim = x.shape
        ids_keep = ids_keep.contiguous()
        out = new_output((batch, ids_keep.shape[1], dim), x.dtype, x.device)
        pos_arg = pos.contiguous() if pos is not None else x  # never read without HAS_POS
        _gather_fwd[(out.shape[0] * out.shape[1],)](
            x,
            ids_keep,
            pos_arg,
            out,
            ids_keep.shape[1],
            dim,
            *x.stride(),
            HAS_POS=pos is not None,
            BLOCK_D=block_size(dim),
        )
        ctx.save_for_backward(ids_keep)
        ctx.tokens, ctx.x_dtype = tokens, x.dtype
        ctx.pos_dtype = pos.dtype if pos is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (ids_keep,) = ctx.saved_tensors
        batch, keep, dim = grad_out.shape
        grad_out = grad_out.contiguous()
        want_pos = ctx.needs_input_grad[2]
        grad_x = new_output((batch, ctx.tokens, dim), ctx.x_dtype, grad_out.device)
        grad_pos = new_output((ctx.tokens, dim), ctx.pos_dtype, grad_out.device) if want_pos else None
        block = block_size(dim)
        grid = (ctx.tokens, triton.cdiv(dim, block))
        _gather_bwd[grid](
            grad_out,
            kept_rank(ids_keep, ctx.tokens),
            grad_x,
            grad_pos if want_pos else grad_x,
            batch,
            ctx.tokens,
            keep,
            dim,
            HAS_POS_GRAD=want_pos,
            BLOCK_D=block,
        )
        return grad_x, None, grad_pos


def masked_gather(x: torch.Tensor, ids_keep: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, N, D), ids_keep (B, K) int with distinct values in [0, N) per row, pos (N, D) or None -> (B, K, D)."""
    batch, tokens, dim = x.shape
    expect_index("ids_keep", ids_keep)
    expect_shape("ids_keep", ids_keep, (batch, None))
    if pos is not None:
        expect_shape("pos", pos, (tokens, dim))
    if use_triton(x):
        return MaskedGather.apply(x, ids_keep, pos)
    return masked_gather_reference(x, ids_keep, pos)
