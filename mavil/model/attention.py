"""Scaled dot-product attention with pluggable backends, all on q, k, v of shape (B, L, H, Dh).

- "xformers": xformers.ops.memory_efficient_attention; CUDA only (xformers has no CPU kernels).
- "sdpa": torch.nn.functional.scaled_dot_product_attention (PyTorch picks flash, efficient or math).
- "math": the plain reference, softmax(q k^T / sqrt(Dh)) v computed in fp32.
- "auto": xformers where it imports and runs for the tensors' device, dtype and head size, else sdpa.

The choice is resolved once per (backend, device type, dtype, head size) and logged at INFO; where a GPU
falls back to sdpa (xformers missing, or not running for that dtype and head size) a warning says why, once
per reason, a missing package with its pip requirement and install command.
"xformers" where it cannot run is an error; the engine refuses it before any work (`why_xformers_unavailable`).
(B, L, H, Dh) is xformers' layout and what the fused qkv projection yields without a copy.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from ..deps import MissingDependency, require

log = logging.getLogger(__name__)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q32, k32, v32 = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, L, Dh)
    weights = (q32 @ k32.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, H, L, L)
    return (weights @ v32).transpose(1, 2).to(q.dtype)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops

    return xformers.ops.memory_efficient_attention(q, k, v)


BACKENDS = {"xformers": attention_xformers, "sdpa": attention_sdpa, "math": attention_math}


def why_xformers_unavailable(device_type: str) -> str | None:
    """Without touching a device: None when xformers may run on `device_type` tensors; otherwise the reason."""
    if device_type != "cuda":
        return f"xformers has no kernels for {device_type} tensors"
    try:
        require("xformers.ops")
    except MissingDependency as err:
        return str(err)
    return None


@functools.lru_cache(maxsize=None)
def why_xformers_cannot_run(device_type: str, dtype: torch.dtype, head_dim: int) -> str | None:
    """None when xformers runs here; otherwise the reason, for the log or the error."""
    reason = why_xformers_unavailable(device_type)
    if reason:
        return reason
    import xformers.ops

    probe = torch.zeros(1, 8, 1, head_dim, device=device_type, dtype=dtype)
    try:
        xformers.ops.memory_efficient_attention(probe, probe, probe)
    except Exception as err:  # any failure means: not usable for these tensors
        return f"memory_efficient_attention fails for {dtype} with head size {head_dim}: {err}"
    return None


@functools.lru_cache(maxsize=None)
def resolve_backend(backend: str, device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"attention backend {backend!r}: must be one of {['auto', *BACKENDS]}")
    reason = why_xformers_cannot_run(device_type, dtype, head_dim) if backend in ("auto", "xformers") else None
    if backend == "xformers" and reason:
        raise RuntimeError(f"attention backend 'xformers' cannot run: {reason}. Use 'auto' or 'sdpa'.")
    chosen = ("sdpa" if reason else "xformers") if backend == "auto" else backend
    log.info("attention: %s -> %s for %s %s, head size %d%s", backend, chosen, device_type,
             str(dtype).removeprefix("torch."), head_dim, f" ({reason})" if reason else "")
    if reason and device_type == "cuda":
        _warn_fallback(reason)
    return chosen


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    """A GPU run slower than it could be: said once per reason (a missing xformers once, not once per head size)."""
    log.warning("attention: xformers cannot run, sdpa instead: %s", reason)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Attention of q (B, Lq, H, Dh) over k, v (B, Lk, H, Dh) -> (B, Lq, H, Dh)."""
    chosen = resolve_backend(backend, q.device.type, q.dtype, q.shape[-1])
    return BACKENDS[chosen](q, k, v)
