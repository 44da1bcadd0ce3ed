"""masked_gather: keep each sample's visible tokens, with the position add fused.

    out[b, k] = x[b, ids_keep[b, k]] + pos[ids_keep[b, k]]        (pos optional)

The encoders call it on the patch embeddings so that adding the fixed positions and dropping the
masked tokens are one pass. Backward (autograd of the reference): the gradient of x scatters
into zeros at ids_keep; pos's gradient sums over the batch.
"""
from __future__ import annotations

import torch

from ._checks import expect_index, expect_shape


def masked_gather_reference(x: torch.Tensor, ids_keep: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    # x: (B, N, D), ids_keep: (B, K), pos: (N, D)  ->  (B, K, D)
    index = ids_keep.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
    kept = torch.gather(x, 1, index)
    if pos is not None:
        kept = kept + pos.to(x.dtype)[ids_keep.long()]
    return kept


def masked_gather(x: torch.Tensor, ids_keep: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, N, D), ids_keep (B, K) int with values in [0, N), pos (N, D) or None -> (B, K, D)."""
    batch, tokens, dim = x.shape
    expect_index("ids_keep", ids_keep)
    expect_shape("ids_keep", ids_keep, (batch, None))
    if pos is not None:
        expect_shape("pos", pos, (tokens, dim))
    return masked_gather_reference(x, ids_keep, pos)
