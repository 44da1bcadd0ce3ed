"""info_nce: the contrastive loss of Eq. 2 of the paper.

    L(x, y) = mean_i [ logsumexp_j S(x_i, y_j) / tau  -  S(x_i, y_{i + offset}) / tau ],   S = cosine similarity

Row i of x (M, H) is a query, row i + offset of y (Nk, H) its positive, every other row of y a
negative. offset = 0 and M = Nk is the paper's in-batch form; with negatives gathered across
data-parallel ranks, each rank holds its M queries against all Nk keys and offset = rank * M.
`symmetric` averages L(x, y) and L(y, x) (same sizes only). Computed in fp32 whatever the input
dtype; returns a 0-dim fp32 tensor. The Triton path never materialises the M x Nk similarity (extra memory
O((M + Nk) * H)); how: docs/kernels.md#the-triton-paths-op-by-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._checks import expect_shape
from ._dispatch import new_output, use_triton

# Tiles: 32 queries x 32 keys, H read in chunks of BLOCK_H; 4 warps. fp32 inputs take IEEE products on CUDA cores,
# where tl.dot holds each thread's share of both operands in registers: chunks of 64 made the keys' backward use
# 255 registers and spill 260-370 bytes per thread on sm_80 and sm_90; chunks of 16 keep all three kernels at
# 80-106 registers without spills (python -m bench.kernels --compile-only; docs/kernels.md).
BLOCK_ROWS = 32
BLOCK_H_TF32, BLOCK_H_IEEE = 64, 16


def info_nce_reference(
    x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = False, offset: int = 0
) -> torch.Tensor:
    # x: (M, H), y: (Nk, H)  ->  ()
    x = F.normalize(x.float(), dim=-1)
    y = F.normalize(y.float(), dim=-1)
    logits = x @ y.T / tau  # (M, Nk): row i holds query i against every key
    labels = torch.arange(x.shape[0], device=x.device) + offset
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """fp32 a @ b: IEEE products for fp32 inputs, TF32 tensor cores otherwise."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _similarity(
    q_ptr,
    k_ptr,
    rows,
    cols,
    M,
    Nk,
    H,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 tile of q[rows] . k[cols] / tau; -inf for columns past Nk."""
    sim = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        q = tl.load(
            q_ptr + rows[:, None].to(tl.int64) * H + hs[None, :],
            mask=(rows[:, None] < M) & (hs[None, :] < H),
            other=0.0,
        )
        k = tl.load(
            k_ptr + cols[:, None].to(tl.int64) * H + hs[None, :],
            mask=(cols[:, None] < Nk) & (hs[None, :] < H),
            other=0.0,
        )
        sim += _dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), IEEE)
    return tl.where(cols[None, :] < Nk, sim * inv_tau, float("-inf"))


@triton.jit
def _nce_fwd(
    q_ptr,
    k_ptr,
    lse_ptr,
    loss_ptr,
    M,
    Nk,
    H,
    offset,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    running_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    positive = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, Nk, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        sim = _similarity(q_ptr, k_ptr, rows, cols, M, Nk, H, inv_tau, IEEE, BLOCK_M, BLOCK_N, BLOCK_H)
        positive += tl.sum(tl.where(cols[None, :] == rows[:, None] + offset, sim, 0.0), axis=1)
        new_max = tl.maximum(running_max, tl.max(sim, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(sim - new_max[:, None]), axis=1)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    tl.store(lse_ptr + rows, lse, mask=rows < M)
    tl.store(loss_ptr + rows, lse - positive, mask=rows < M)


@triton.jit
def _grad_sim(
    q_ptr,
    k_ptr,
    lse_ptr,
    rows,
    cols,
    M,
    Nk,
    H,
    offset,
    inv_tau,
    scale,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """d loss / d sim for a tile, times 1/tau: (softmax - onehot(positive)) * grad / M / tau; 0 outside."""
    sim = _similarity(q_ptr, k_ptr, rows, cols, M, Nk, H, inv_tau, IEEE, BLOCK_M, BLOCK_N, BLOCK_H)
    lse = tl.load(lse_ptr + rows, mask=rows < M, other=0.0)
    prob = tl.exp(sim - lse[:, None])
    is_positive = cols[None, :] == rows[:, None] + offset
    grad = tl.where(is_positive, prob - 1.0, prob) * (scale * inv_tau)
    return tl.where((rows[:, None] < M) & (cols[None, :] < Nk), grad, 0.0)


@triton.jit
def _nce_bwd_queries(
    q_ptr,
    k_ptr,
    lse_ptr,
    scale_ptr,
    dq_ptr,
    M,
    Nk,
    H,
    offset,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """dq[rows] = sum over key blocks of dsim @ k, accumulated in the (fp32, zeroed) output: this program owns these
    rows."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    scale = tl.load(scale_ptr)
    for n0 in range(0, Nk, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        dsim = _grad_sim(
            q_ptr, k_ptr, lse_ptr, rows, cols, M, Nk, H, offset, inv_tau, scale, IEEE, BLOCK_M, BLOCK_N, BLOCK_H
        )
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            k = tl.load(
                k_ptr + cols[:, None].to(tl.int64) * H + hs[None, :],
                mask=(cols[:, None] < Nk) & (hs[None, :] < H),
                other=0.0,
            )
            out = dq_ptr + rows[:, None].to(tl.int64) * H + hs[None, :]
            inside = (rows[:, None] < M) & (hs[None, :] < H)
            acc = tl.load(out, mask=inside, other=0.0) + _dot(dsim, k.to(tl.float32), IEEE)
            tl.store(out, acc, mask=inside)


@triton.jit
def _nce_bwd_keys(
    q_ptr,
    k_ptr,
    lse_ptr,
    scale_ptr,
    dk_ptr,
    M,
    Nk,
    H,
    offset,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """dk[cols] = sum over query blocks of dsim^T @ q, accumulated like the queries'."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    scale = tl.load(scale_ptr)
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        dsim = _grad_sim(
            q_ptr, k_ptr, lse_ptr, rows, cols, M, Nk, H, offset, inv_tau, scale, IEEE, BLOCK_M, BLOCK_N, BLOCK_H
        )
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            q = tl.load(
                q_ptr + rows[:, None].to(tl.int64) * H + hs[None, :],
                mask=(rows[:, None] < M) & (hs[None, :] < H),
                other=0.0,
            )
            out = dk_ptr + cols[:, None].to(tl.int64) * H + hs[None, :]
            inside = (cols[:, None] < Nk) & (hs[None, :] < H)
            acc = tl.load(out, mask=inside, other=0.0) + _dot(tl.trans(dsim), q.to(tl.float32), IEEE)
            tl.store(out, acc, mask=inside)


class InfoNCE(torch.autograd.Function):
    """L(q, k) on rows already normalised to unit length; returns the mean over queries (fp32)."""

    @staticmethod
    def forward(ctx, q, k, tau, offset):
        q, k = q.contiguous(), k.contiguous()
        rows, dim = q.shape
        lse = new_output((rows,), torch.float32, q.device)
        per_row = new_output((rows,), torch.float32, q.device)
        args = (rows, k.shape[0], dim, offset, 1.0 / tau)
        ieee = q.dtype == torch.float32
        meta = dict(IEEE=ieee, BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_ROWS, BLOCK_H=BLOCK_H_IEEE if ieee else BLOCK_H_TF32)
        _nce_fwd[(triton.cdiv(rows, BLOCK_ROWS),)](q, k, lse, per_row, *args, **meta)
        ctx.save_for_backward(q, k, lse)
        ctx.args, ctx.meta = args, meta
        return per_row.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        q, k, lse = ctx.saved_tensors
        scale = (grad_loss.float() / q.shape[0]).reshape(1)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # accumulators: zeros, not poisoned
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        _nce_bwd_queries[(triton.cdiv(q.shape[0], BLOCK_ROWS),)](q, k, lse, scale, dq, *ctx.args, **ctx.meta)
        _nce_bwd_keys[(triton.cdiv(k.shape[0], BLOCK_ROWS),)](q, k, lse, scale, dk, *ctx.args, **ctx.meta)
        return dq.to(q.dtype), dk.to(k.dtype), None, None


def _info_nce_triton(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool, offset: int) -> torch.Tensor:
    # normalise in fp32 (autograd carries the gradient through), hand the kernel the input dtype
    q = F.normalize(x.float(), dim=-1).to(x.dtype)
    k = F.normalize(y.float(), dim=-1).to(y.dtype)
    loss = InfoNCE.apply(q, k, tau, offset)
    if symmetric:
        loss = 0.5 * (loss + InfoNCE.apply(k, q, tau, offset))
    return loss


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = False, offset: int = 0) -> torch.Tensor:
    """x (M, H) queries, y (Nk, H) keys with y[i + offset] the positive of x[i]; tau > 0 the temperature."""
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"x, y: expected shapes (M, H) and (Nk, H), got {tuple(x.shape)} and {tuple(y.shape)}")
    expect_shape("y", y, (None, x.shape[1]))
    if not 0 <= offset <= y.shape[0] - x.shape[0]:
        raise ValueError(f"offset: {offset} puts positives of {x.shape[0]} queries outside {y.shape[0]} keys")
    if symmetric and x.shape != y.shape:
        raise ValueError(f"symmetric: needs x and y of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not tau > 0:
        raise ValueError(f"tau: must be > 0, got {tau}")
    if use_triton(x):
        return _info_nce_triton(x, y, tau, symmetric, offset)
    return info_nce_reference(x, y, tau, symmetric, offset)


def _gather_rows(t: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """All ranks' rows of t concatenated, with gradient (each rank's slice receives the sum of every rank's
    gradient for it), and the offset of this rank's rows. Ranks may hold different row counts."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    counts = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, torch.tensor([t.shape[0]], device=t.device), group=group)
    counts = [int(c) for c in counts]
    padded = F.pad(t, (0, 0, 0, max(counts) - t.shape[0]))  # all_gather needs one shape
    parts = all_gather(padded, group=group)
    rows = torch.cat([part[:count] for part, count in zip(parts, counts)])
    return rows, sum(counts[: dist.get_rank(group)])


def info_nce_global(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = False, group=None) -> torch.Tensor:
    """Eq. 2 with the negatives of every data-parallel rank: this rank's queries x (M, H) against the keys y of
    all ranks, gathered with gradient. Averaged over ranks (as data-parallel gradients are), it is the loss of
    the whole global batch. Without an initialised process group, or with one rank, it is `info_nce`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return info_nce(x, y, tau, symmetric)
    keys, offset = _gather_rows(y, group)
    loss = info_nce(x, keys, tau, offset=offset)
    if symmetric:
        queries, _ = _gather_rows(x, group)
        loss = 0.5 * (loss + info_nce(y, queries, tau, offset=offset))
    return loss
