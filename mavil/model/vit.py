"""Transformer blocks (timm/MAE style): pre-norm, qkv bias, MLP x4 with GELU, LayerNorm eps 1e-6,
optional drop path, attention through the pluggable backends of `attention.py`.

Each attention module resolves its backend once, at its first eager call (or in `resolve_attention`, which
torch.compile needs first), and then holds the chosen plain function: the traced forward has no backend
logic, logging or probing in it. Moving the module to another device or dtype resolves it again.

Activation checkpointing (`set_grad_checkpointing`, the config's model.grad_checkpointing): each block's
activations are recomputed in backward instead of kept, while training with grad enabled; the RNG state is
restored for the recomputation, so drop path draws the same samples.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionFn, backend_function

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

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = name
        self.attend: AttentionFn | None = None  # the backend's function once resolved; None: at the next call

    def resolve(self, device_type: str, dtype: torch.dtype) -> AttentionFn:
        """Chooses the backend's function for tensors of this device type and dtype (eager code: may log, probe)."""
        self.attend = backend_function(self.backend, device_type, dtype, self.qkv.in_features // self.heads)
        return self.attend

    def _apply(self, fn, recurse=True):
        self.attend = None  # another device or dtype: resolved again
        return super()._apply(fn, recurse)

    @torch.compiler.disable
    def _resolve_for(self, q: torch.Tensor) -> AttentionFn:
        return self.resolve(q.device.type, q.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)  # (B, L, H, Dh)
        attend = self.attend if self.attend is not None else self._resolve_for(q)
        return self.proj(attend(q, k, v).reshape(batch, length, dim))


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
        self.grad_checkpointing = False  # set_grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)  # preserve_rng_state: the same drop path
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(depth: int, dim: int, heads: int, mlp_ratio: float, drop_path: float, backend: str) -> nn.ModuleList:
    """`depth` blocks with drop path rising linearly from 0 to `drop_path` (timm's rule)."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(Block(dim, heads, mlp_ratio, rate, backend) for rate in rates)


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm (none with final_norm=False): (B, L, dim) -> (B, L, dim)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        backend: str = "auto",
        final_norm: bool = True,
    ):
        super().__init__()
        self.blocks = make_blocks(depth, dim, heads, mlp_ratio, drop_path, backend)
        self.norm = LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Activation checkpointing on (or off) for every transformer block in `model`: encoders, fusion, decoders."""
    for module in model.modules():
        if isinstance(module, Block):
            module.grad_checkpointing = enabled
    return model


def resolve_attention(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> set[str]:
    """Resolves every attention module's backend for tensors of `device` and `dtype`, eagerly: what
    torch.compile needs before it traces (the modules then hold plain functions). -> the backends chosen."""
    device_type = torch.device(device).type
    return {
        module.resolve(device_type, dtype).__name__.removeprefix("attention_")
        for module in model.modules()
        if isinstance(module, Attention)
    }


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
