"""Kernel tests: each Triton kernel against its PyTorch reference, forward and backward.

On a machine without CUDA the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 first); with CUDA the same tests run the compiled kernels on the GPU.
Outputs the kernels allocate start as NaN, so an element a kernel does not write fails.
"""

import pytest
import torch

from mavil.kernels import _dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@pytest.fixture
def triton_path(monkeypatch):
    """Forces the Triton path with poisoned outputs; yields a function that runs a call on the reference path."""
    monkeypatch.setattr(_dispatch, "POISON_OUTPUTS", True)
    monkeypatch.setenv("MAVIL_KERNELS", "triton")

    def on_reference(call):
        with monkeypatch.context() as m:
            m.setenv("MAVIL_KERNELS", "reference")
            return call()

    return on_reference


def assert_close(actual, expected, dtype):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCE[dtype])


def grads(output, inputs, grad_output):
    return torch.autograd.grad(output, inputs, grad_output)
