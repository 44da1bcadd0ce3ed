"""masked_restore: put [MASK] tokens back and restore the original token order (the MAE convention).

    out[b, n] = (x_vis[b, r] if r < K else mask_token) + pos[n],   r = ids_restore[b, n]

x_vis holds the K visible tokens in shuffled order; ids_restore[b, n] is the rank of token n in
that order, so ranks >= K are the masked tokens. Backward: x_vis's gradient is gathered back from the
visible positions, mask_token's is the sum over all masked positions, pos's the sum over the
batch. The Triton backward runs one program per (token, channel block) looping over the batch:
each visible gradient row is written once, the two sums are reduced without atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import expect_index, expect_shape
from ._dispatch import block_size, new_output, use_triton


def masked_restore_reference(
    x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor | None = None
) -> torch.Tensor:
    # x_vis: (B, K, D), ids_restore: (B, N), mask_token: (D,), pos: (N, D)  ->  (B, N, D)
    batch, visible, dim = x_vis.shape
    tokens = ids_restore.shape[1]
    mask_tokens = mask_token.to(x_vis.dtype).expand(batch, tokens - visible, dim)
    shuffled = torch.cat([x_vis, mask_tokens], dim=1)  # (B, N, D) in shuffled order
    restored = torch.gather(shuffled, 1, ids_restore.long().unsqueeze(-1).expand(-1, -1, dim))
    if pos is None:
        return restored
    return (restored.float() + pos.float()).to(x_vis.dtype)  # one rounding, as the kernel


@triton.jit
def _restore_fwd(
    x_ptr,
    ids_ptr,
    mask_token_ptr,
    pos_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_xb,
    stride_xk,
    HAS_POS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # b * N + n
    b, token = row // N, row % N
    rank = tl.load(ids_ptr + row)
    visible = rank < K
    src = x_ptr + b.to(tl.int64) * stride_xb + tl.where(visible, rank, 0).to(tl.int64) * stride_xk
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        inside = cols < D
        kept = tl.load(src + cols, mask=inside & visible, other=0.0).to(tl.float32)
        filler = tl.load(mask_token_ptr + cols, mask=inside & ~visible, other=0.0).to(tl.float32)
        value = tl.where(visible, kept, filler)
        if HAS_POS:
            value += tl.load(pos_ptr + token * D + cols, mask=inside).to(tl.float32)
        tl.store(out_ptr + row.to(tl.int64) * D + cols, value.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _restore_bwd(
    grad_out_ptr,
    ids_ptr,
    grad_x_ptr,
    mask_partial_ptr,
    grad_pos_ptr,
    B,
    N,
    K,
    D,
    HAS_POS_GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = cols < D
    mask_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    pos_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for b in range(B):
        rank = tl.load(ids_ptr + b * N + token)
        visible = rank < K
        grad = tl.load(grad_out_ptr + (b * N + token).to(tl.int64) * D + cols, mask=inside, other=0.0).to(tl.float32)
        dst = grad_x_ptr + (b * K + tl.where(visible, rank, 0)).to(tl.int64) * D + cols
        tl.store(dst, grad.to(grad_x_ptr.dtype.element_ty), mask=inside & visible)
        mask_acc += tl.where(visible, 0.0, grad)
        if HAS_POS_GRAD:
            pos_acc += grad
    tl.store(mask_partial_ptr + token * D + cols, mask_acc, mask=inside)
    if HAS_POS_GRAD:
        tl.store(grad_pos_ptr + token * D + cols, pos_acc.to(grad_pos_ptr.dtype.element_ty), mask=inside)


class MaskedRestore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_vis, ids_restore, mask_token, pos):
        batch, visible, dim = x_vis.shape
        tokens = ids_restore.shape[1]
        if x_vis.stride(-1) != 1:
            x_vis = x_vis.contiguous()
        ids_restore = ids_restore.contiguous()
        out = new_output((batch, tokens, dim), x_vis.dtype, x_vis.device)
        pos_arg = pos.contiguous() if pos is not None else out  # never read without HAS_POS
        _restore_fwd[(batch * tokens,)](
            x_vis,
            ids_restore,
            mask_token.contiguous(),
            pos_arg,
            out,
            tokens,
            visible,
            dim,
            x_vis.stride(0),
            x_vis.stride(1),
            HAS_POS=pos is not None,
            BLOCK_D=block_size(dim),
        )
        ctx.save_for_backward(ids_restore)
        ctx.visible, ctx.x_dtype, ctx.mask_dtype = visible, x_vis.dtype, mask_token.dtype
        ctx.pos_dtype = pos.dtype if pos is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (ids_restore,) = ctx.saved_tensors
        batch, tokens, dim = grad_out.shape
        grad_out = grad_out.contiguous()
        want_pos = ctx.needs_input_grad[3]
        grad_x = new_output((batch, ctx.visible, dim), ctx.x_dtype, grad_out.device)
        mask_partial = new_output((tokens, dim), torch.float32, grad_out.device)  # per-token sums, reduced below
        grad_pos = new_output((tokens, dim), ctx.pos_dtype, grad_out.device) if want_pos else None
        block = block_size(dim)
        _restore_bwd[(tokens, triton.cdiv(dim, block))](
            grad_out,
            ids_restore,
            grad_x,
            mask_partial,
            grad_pos if want_pos else mask_partial,
            batch,
            tokens,
            ctx.visible,
            dim,
            HAS_POS_GRAD=want_pos,
            BLOCK_D=block,
        )
        return grad_x, None, mask_partial.sum(0).to(ctx.mask_dtype), grad_pos


def masked_restore(
    x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor | None = None
) -> torch.Tensor:
    """x_vis (B, K, D), ids_restore (B, N) a permutation of [0, N) per row, mask_token (D,), pos (N, D) or None
    -> (B, N, D)."""
    batch, visible, dim = x_vis.shape
    expect_index("ids_restore", ids_restore)
    expect_shape("ids_restore", ids_restore, (batch, None))
    tokens = ids_restore.shape[1]
    if visible > tokens:
        raise ValueError(f"x_vis: {visible} visible tokens but ids_restore covers only {tokens}")
    expect_shape("mask_token", mask_token, (dim,))
    if pos is not None:
        expect_shape("pos", pos, (tokens, dim))
    if use_triton(x_vis):
        return MaskedRestore.apply(x_vis, ids_restore, mask_token, pos)
    return masked_restore_reference(x_vis, ids_restore, mask_token, pos)
