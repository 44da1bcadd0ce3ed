"""Transformer blocks (timm/MAE style): pre-norm, qkv bias, MLP x4 with GELU, LayerNorm eps 1e-6,
optional drop path, attention through the pluggable backends of `attention.py`."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .attention import attend

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability `p` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        per_sample = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * per_sample / keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, backend: str = "auto"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)  # (B, L, H, Dh)
        return self.proj(attend(q, k, v, self.backend).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, heads, backend)
        self.norm2, self.mlp = LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(depth: int, dim: int, heads: int, mlp_ratio: float, drop_path: float, backend: str) -> nn.ModuleList:
    """`depth` blocks with drop path rising linearly from 0 to `drop_path` (timm's rule)."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(Block(dim, heads, mlp_ratio, rate, backend) for rate in rates)


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        self.blocks = make_blocks(depth, dim, heads, mlp_ratio, drop_path, backend)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear and patch projections (as flattened matrices), zero biases,
    unit LayerNorms. Tokens ([CLS], [MASK], bottlenecks) are set by their owners, normal with std 0.02."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
