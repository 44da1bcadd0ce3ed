"""Kernel tests, one file per op (test_<op>.py): each Triton kernel against its PyTorch reference, forward and
backward, and each reference against an explicit, loop-level definition of the op.

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
# masked_gather, masked_restore (B, N, K, D): odd D, K = 1, K = N - 1, B = 1, and the paper's D with a short sequence
SHAPES = [(3, 13, 5, 37), (2, 9, 1, 16), (2, 9, 8, 24), (1, 7, 3, 5), (2, 6, 2, 768)]


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


def random_ids(batch, tokens, keep, generator):
    """(ids_keep, ids_restore) of a random mask keeping `keep` of `tokens` per sample, on DEVICE."""
    shuffle = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
    return shuffle[:, :keep].to(DEVICE), shuffle.argsort(dim=1).to(DEVICE)
