"""Scaled dot-product attention with pluggable backends, all on q, k, v of shape (B, L, H, Dh).

- "xformers": xformers.ops.memory_efficient_attention, used only where it runs kernels of its own.
- "sdpa": torch.nn.functional.scaled_dot_product_attention (PyTorch picks flash, efficient or math).
- "math": the plain reference, softmax(q k^T / sqrt(Dh)) v computed in fp32.
- "auto": xformers where it runs kernels of its own for the tensors' device, dtype and head size, else sdpa.

The choice is resolved once per (backend, device type, dtype, head size), outside traced code, and logged once.
"xformers" where it cannot run is an error (`why_xformers_unavailable`). When xformers counts as runnable, and why:
docs/model.md#attention-backends.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..deps import MissingDependency, require

log = logging.getLogger(__name__)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


BACKENDS: dict[str, AttentionFn] = {"xformers": attention_xformers, "sdpa": attention_sdpa, "math": attention_math}
PYTORCH_OP_SUFFIX = "-pt"  # xformers names the fmha ops that call PyTorch's own kernels "...-pt"


def _import_xformers():
    """xformers.ops, imported with xformers' own import-time warning muted (ours says why, once); raises
    MissingDependency naming the pip requirement."""
    xformers_log = logging.getLogger("xformers")
    level = xformers_log.level
    xformers_log.setLevel(logging.ERROR)
    try:
        return require("xformers.ops")
    finally:
        xformers_log.setLevel(level)


def _extension_failure() -> str | None:
    """Why xformers' C++/CUDA extension did not load (a build for another torch, CUDA or Python), or None."""
    import xformers
    from xformers import _cpp_lib

    error = _cpp_lib._cpp_library_load_exception
    if error is None:
        return None
    info = getattr(error, "build_info", None)
    if info is None:
        built = "not built for this torch"
    else:
        cuda = f"CUDA {info.cuda_version // 100}.{info.cuda_version % 100}" if info.cuda_version else "no CUDA"
        built = f"built for torch {info.torch_version} with {cuda} and Python {info.python_version}"
    return (
        f"xformers {xformers.__version__}'s C++/CUDA extension does not load ({built}; this is torch "
        f"{torch.__version__} with CUDA {torch.version.cuda})"
    )


def xformers_attention_ops() -> dict[str, bool]:
    """The fmha forward ops xformers' CUDA dispatcher may pick, in its order, that exist in this install:
    {name: True where the op runs a kernel of its own, False where it calls PyTorch's}. No device touched."""
    from xformers.ops.fmha import cutlass, flash, flash3

    ops = [flash3.FwOp, flash.FwOp, cutlass.FwOp]
    return {op.NAME: not op.NAME.endswith(PYTORCH_OP_SUFFIX) for op in ops if op.is_available()}


@functools.lru_cache(maxsize=None)
def why_xformers_unavailable(device_type: str) -> str | None:
    """Without touching a device: None when xformers may run kernels of its own on `device_type` tensors
    (the probe of `why_xformers_cannot_run` decides); otherwise the reason."""
    if device_type != "cuda":
        return f"xformers has no kernels for {device_type} tensors"
    try:
        _import_xformers()
    except MissingDependency as err:
        return str(err)
    reasons = [_extension_failure()]
    ops = xformers_attention_ops()
    if not any(ops.values()):
        reasons.append(
            f"its memory_efficient_attention would run only PyTorch's own kernels "
            f"({', '.join(ops) or 'none available'}), which sdpa runs without it"
        )
    reasons = [reason for reason in reasons if reason]
    return "; ".join(reasons) if reasons else None


def _probe(device_type: str, dtype: torch.dtype, head_dim: int) -> str | None:
    """One small forward and backward through xformers on the device, checked against the math reference;
    the ops its dispatcher picks must not be PyTorch's own. None when all holds, else why not."""
    import xformers.ops
    from xformers.ops import fmha

    generator = torch.Generator(device_type).manual_seed(0)
    q, k, v = (
        torch.randn(2, 33, 2, head_dim, device=device_type, dtype=dtype, generator=generator).requires_grad_()
        for _ in range(3)
    )
    try:
        inputs = fmha.Inputs(query=q, key=k, value=v)
        chosen = [fmha._dispatch_fw(inputs, True).NAME, fmha._dispatch_bw(inputs, None).NAME]
    except Exception as err:  # noqa: BLE001 (any failure means: no xformers kernel for these tensors)
        return f"no memory_efficient_attention kernel for {dtype} with head size {head_dim}: {err}"
    borrowed = [name for name in chosen if name.endswith(PYTORCH_OP_SUFFIX)]
    if borrowed:
        return (
            f"memory_efficient_attention would run PyTorch's own kernels for {dtype} with head size {head_dim} "
            f"({', '.join(borrowed)}), which sdpa runs without it"
        )
    try:
        out = xformers.ops.memory_efficient_attention(q, k, v)
        grad_out = torch.randn(out.shape, device=device_type, dtype=dtype, generator=generator)
        got = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
        ref = attention_math(q, k, v)
        want = (ref, *torch.autograd.grad(ref, (q, k, v), grad_out))
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        for name, a, b in zip(("output", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")
    except Exception as err:  # noqa: BLE001
        return (
            f"memory_efficient_attention ({' / '.join(chosen)}) fails its probe for {dtype} with head size "
            f"{head_dim}: {err}"
        )
    return None


@functools.lru_cache(maxsize=None)
def why_xformers_cannot_run(device_type: str, dtype: torch.dtype, head_dim: int) -> str | None:
    """None when xformers runs kernels of its own here, forward and backward; otherwise the reason, for the
    log or the error. Runs the probe on the device (once per combination)."""
    reason = why_xformers_unavailable(device_type)
    if reason:
        return reason
    with torch.inference_mode(False), torch.enable_grad():
        return _probe(device_type, dtype, head_dim)


@functools.lru_cache(maxsize=None)
def resolve_backend(backend: str, device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The backend that runs for `backend` on such tensors: eager code only (it may probe the device and logs)."""
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"attention backend {backend!r}: must be one of {['auto', *BACKENDS]}")
    reason = why_xformers_cannot_run(device_type, dtype, head_dim) if backend in ("auto", "xformers") else None
    if backend == "xformers" and reason:
        raise RuntimeError(f"attention backend 'xformers' cannot run: {reason}. Use 'auto' or 'sdpa'.")
    chosen = ("sdpa" if reason else "xformers") if backend == "auto" else backend
    warn = bool(reason) and device_type == "cuda"  # a GPU run that could be faster: the warning says why
    log.info(
        "attention: %s -> %s for %s %s, head size %d%s",
        backend,
        chosen,
        device_type,
        str(dtype).removeprefix("torch."),
        head_dim,
        f" ({reason})" if reason and not warn else "",
    )
    if warn:
        _warn_fallback(reason)
    return chosen


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    """A GPU run that could be faster: said once per reason (a missing xformers once, not once per head size)."""
    log.warning("attention: xformers cannot run, sdpa instead: %s", reason)


def backend_function(backend: str, device_type: str, dtype: torch.dtype, head_dim: int) -> AttentionFn:
    """The plain function that `backend` resolves to for such tensors (what the attention modules hold)."""
    return BACKENDS[resolve_backend(backend, device_type, dtype, head_dim)]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Attention of q (B, Lq, H, Dh) over k, v (B, Lk, H, Dh) -> (B, Lq, H, Dh). Resolves the backend at each call
    (cached): for eager use; the model's modules hold the resolved function instead."""
    return backend_function(backend, q.device.type, q.dtype, q.shape[-1])(q, k, v)
