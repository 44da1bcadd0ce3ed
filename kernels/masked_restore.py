"""masked_restore: put [MASK] tokens back and restore the original token order (the MAE convention).

    out[b, n] = (x_vis[b, r] if r < K else mask_token) + pos[n],   r = ids_restore[b, n]

x_vis holds the K visible tokens in shuffled order; ids_restore[b, n] is the rank of token n in
that order, so ranks >= K are the masked tokens. Backward (autograd of the reference): x_vis's
gradient is gathered back from the visible positions, mask_token's is the sum over all masked
positions, pos's the sum over the batch.
"""
from __future__ import annotations

import torch

from ._checks import expect_index, expect_shape


def masked_restore_reference(x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                             pos: torch.Tensor | None = None) -> torch.Tensor:
    # x_vis: (B, K, D), ids_restore: (B, N), mask_token: (D,), pos: (N, D)  ->  (B, N, D)
    batch, visible, dim = x_vis.shape
    tokens = ids_restore.shape[1]
    mask_tokens = mask_token.to(x_vis.dtype).expand(batch, tokens - visible, dim)
    shuffled = torch.cat([x_vis, mask_tokens], dim=1)  # (B, N, D) in shuffled order
    restored = torch.gather(shuffled, 1, ids_restore.long().unsqueeze(-1).expand(-1, -1, dim))
    if pos is not None:
        restored = restored + pos.to(x_vis.dtype)
    return restored


def masked_restore(x_vis: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                   pos: torch.Tensor | None = None) -> torch.Tensor:
    """x_vis (B, K, D), ids_restore (B, N) int in [0, N), mask_token (D,), pos (N, D) or None -> (B, N, D)."""
    batch, visible, dim = x_vis.shape
    expect_index("ids_restore", ids_restore)
    expect_shape("ids_restore", ids_restore, (batch, None))
    tokens = ids_restore.shape[1]
    if visible > tokens:
        raise ValueError(f"x_vis: {visible} visible tokens but ids_restore covers only {tokens}")
    expect_shape("mask_token", mask_token, (dim,))
    if pos is not None:
        expect_shape("pos", pos, (tokens, dim))
    return masked_restore_reference(x_vis, ids_restore, mask_token, pos)
