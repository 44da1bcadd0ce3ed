"""info_nce: the contrastive loss of Eq. 2 of the paper.

    L(x, y) = mean_i [ logsumexp_j S(x_i, y_j) / tau  -  S(x_i, y_i) / tau ],   S = cosine similarity

Row i of x is the query, row i of y its positive, every other row of y a negative. `symmetric`
averages L(x, y) and L(y, x). Computed in fp32 whatever the input dtype; returns a 0-dim fp32
tensor. The reference materialises the B x B similarity; the Triton kernel tiles it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import expect_shape


def info_nce_reference(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = False) -> torch.Tensor:
    # x, y: (B, H)  ->  ()
    x = F.normalize(x.float(), dim=-1)
    y = F.normalize(y.float(), dim=-1)
    logits = x @ y.T / tau  # (B, B): row i holds query i against every key
    labels = torch.arange(x.shape[0], device=x.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float, symmetric: bool = False) -> torch.Tensor:
    """x (B, H) queries and y (B, H) keys, row i of each a positive pair; tau > 0 the temperature."""
    if x.dim() != 2:
        raise ValueError(f"x: expected shape (B, H), got {tuple(x.shape)}")
    expect_shape("y", y, tuple(x.shape))
    if not tau > 0:
        raise ValueError(f"tau: must be > 0, got {tau}")
    return info_nce_reference(x, y, tau, symmetric)
