import pytest
import torch

from mavil.kernels import masked_gather
from mavil.kernels.masked_gather import MaskedGather


def call_gather():
    return masked_gather(torch.randn(2, 5, 3), torch.tensor([[0, 2], [4, 1]]))


@pytest.mark.parametrize(
    "mode, uses_triton", [("triton", True), ("reference", False), ("auto", torch.cuda.is_available())]
)
def test_mode_picks_the_path(monkeypatch, mode, uses_triton):
    calls = []
    original = MaskedGather.apply
    monkeypatch.setattr(MaskedGather, "apply", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv("MAVIL_KERNELS", mode)
    call_gather()
    assert bool(calls) == uses_triton


def test_unknown_mode_is_named(monkeypatch):
    monkeypatch.setenv("MAVIL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MAVIL_KERNELS='cuda': must be one of"):
        call_gather()
