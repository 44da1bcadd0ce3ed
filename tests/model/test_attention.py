"""Which attention backend runs, decided once, honestly: xformers only where it runs kernels of its own.

The installed xformers (0.0.35, built for torch 2.10 and CUDA 12.8) is asked for real: its C++/CUDA extension
does not load under torch 2.11 and its memory_efficient_attention would run PyTorch's own kernels, so `auto`
must pick sdpa, say why once, and never touch a device to decide that. The probe's decision logic runs on the
CPU with xformers' dispatcher and memory_efficient_attention replaced where a GPU would be needed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mavil.model import attention
from mavil.model.vit import Attention

from ..conftest import REPO


@pytest.fixture(autouse=True)
def fresh_caches():
    for cached in (
        attention.resolve_backend,
        attention.why_xformers_cannot_run,
        attention.why_xformers_unavailable,
        attention._warn_fallback,
    ):
        cached.cache_clear()
    yield
    for cached in (
        attention.resolve_backend,
        attention.why_xformers_cannot_run,
        attention.why_xformers_unavailable,
        attention._warn_fallback,
    ):
        cached.cache_clear()


def installed_xformers():
    try:
        return attention._import_xformers()
    except ImportError:
        pytest.skip("xformers is not installed")


def test_the_installed_xformers_cannot_run_here_and_the_reason_says_why():
    installed_xformers()
    reason = attention.why_xformers_unavailable("cuda")  # decided without a device
    from xformers import _cpp_lib

    if _cpp_lib._cpp_library_load_exception is not None:  # the pinned stack: a build for another torch
        assert "C++/CUDA extension does not load" in reason and f"this is torch {torch.__version__}" in reason
    ops = attention.xformers_attention_ops()
    if not any(ops.values()):  # no flash_attn / flash_attn_3 package: fmha would call PyTorch's kernels
        assert "PyTorch's own kernels" in reason and all(name in reason for name in ops)
        assert all(name.endswith("-pt") for name in ops)
    assert reason is not None
    assert attention.why_xformers_unavailable("cpu") == "xformers has no kernels for cpu tensors"


def test_auto_falls_back_to_sdpa_once_per_process_with_one_warning(caplog):
    installed_xformers()
    with caplog.at_level(logging.INFO, logger="mavil.model.attention"):
        chosen = [attention.resolve_backend("auto", "cuda", torch.bfloat16, head) for head in (64, 32, 64, 32)]
    assert chosen == ["sdpa"] * 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sdpa instead" in warnings[0], warnings
    assert sum(r.levelno == logging.INFO for r in caplog.records) == 2  # one per (dtype, head size)
    with pytest.raises(RuntimeError, match="'xformers' cannot run"):
        attention.resolve_backend("xformers", "cuda", torch.bfloat16, 64)


def test_importing_xformers_for_the_decision_prints_no_warning_of_its_own():
    installed_xformers()
    code = "from mavil.model.attention import why_xformers_unavailable as why; print(why('cuda'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WARNING[XFORMERS]" not in result.stderr, result.stderr[-2000:]


class FakeOp(SimpleNamespace):
    pass


@pytest.fixture
def fake_fmha(monkeypatch):
    """xformers' dispatcher and memory_efficient_attention replaced: the probe's logic runs on CPU tensors."""
    installed_xformers()
    import xformers.ops
    from xformers.ops import fmha

    def install(forward_name, backward_name, kernel):
        monkeypatch.setattr(fmha, "_dispatch_fw", lambda inp, needs_gradient: FakeOp(NAME=forward_name))
        monkeypatch.setattr(fmha, "_dispatch_bw", lambda inp, varlen_lse_packed: FakeOp(NAME=backward_name))
        monkeypatch.setattr(xformers.ops, "memory_efficient_attention", kernel)

    return install


def test_the_real_dispatcher_has_no_xformers_kernel_for_cpu_tensors():
    installed_xformers()
    reason = attention._probe("cpu", torch.float32, 16)
    assert reason.startswith("no memory_efficient_attention kernel for torch.float32 with head size 16")


def test_the_probe_refuses_pytorch_kernels_behind_xformers(fake_fmha):
    fake_fmha("fa2F@2.8.3", "cutlassB-pt", attention.attention_math)
    reason = attention._probe("cpu", torch.float32, 16)
    assert "PyTorch's own kernels" in reason and "cutlassB-pt" in reason and "fa2F@2.8.3" not in reason


def test_the_probe_accepts_own_kernels_that_match_forward_and_backward(fake_fmha):
    fake_fmha("fa3F@3.0", "fa3B@3.0", attention.attention_math)
    assert attention._probe("cpu", torch.float32, 16) is None


def test_the_probe_refuses_a_kernel_with_a_wrong_backward(fake_fmha):
    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            return attention.attention_math(q, k, v)

        @staticmethod
        def backward(ctx, grad):
            return torch.zeros_like(grad), torch.zeros_like(grad), torch.zeros_like(grad)

    fake_fmha("fa3F@3.0", "fa3B@3.0", WrongBackward.apply)
    reason = attention._probe("cpu", torch.float32, 16)
    assert "fails its probe" in reason and ": dq:" in reason  # the forward matched


def test_a_module_resolves_once_and_again_after_a_move_or_a_new_backend(monkeypatch):
    calls = []
    real = attention.resolve_backend
    monkeypatch.setattr(attention, "resolve_backend", lambda *args: calls.append(args) or real(*args))
    module, x = Attention(32, 4), torch.randn(2, 5, 32)
    for _ in range(3):
        module(x)
    assert calls == [("auto", "cpu", torch.float32, 8)] and module.attend is attention.attention_sdpa
    module.double()(x.double())
    assert calls[-1] == ("auto", "cpu", torch.float64, 8)
    module.backend = "math"
    module(x.double())
    assert calls[-1] == ("math", "cpu", torch.float64, 8) and module.attend is attention.attention_math
    assert len(calls) == 3
