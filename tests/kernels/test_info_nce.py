"""info_nce: the Triton kernel against the PyTorch reference, the reference against cross-entropy and a loop,
its memory on a GPU, its argument checks."""

import pytest
import torch
import torch.nn.functional as F

from mavil.kernels import info_nce

from .conftest import DEVICE, DTYPES, assert_close, grads


NCE_CASES = [  # (queries, keys, H, offset, symmetric): one-row, odd sizes, a gathered-keys block, tiles > 1
    (1, 1, 8, 0, False),
    (5, 5, 37, 0, False),
    (33, 33, 70, 0, True),
    (7, 21, 16, 9, False),
    (40, 40, 768, 0, False),
]


@DTYPES
@pytest.mark.parametrize("rows, keys, dim, offset, symmetric", NCE_CASES)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_info_nce_matches_reference(triton_path, rows, keys, dim, offset, symmetric, tau, dtype):
    gen = torch.Generator().manual_seed(rows * 100 + keys + dim)
    x = torch.randn(rows, dim, generator=gen).to(DEVICE, dtype).requires_grad_()
    y = torch.randn(keys, dim, generator=gen).to(DEVICE, dtype).requires_grad_()
    loss = info_nce(x, y, tau, symmetric, offset)
    expected = triton_path(lambda: info_nce(x, y, tau, symmetric, offset))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, expected, dtype)
    grad_loss = torch.tensor(0.7, device=DEVICE)
    for got, want in zip(grads(loss, (x, y), grad_loss), grads(expected, (x, y), grad_loss)):
        assert_close(got, want, dtype)


def test_info_nce_equals_cross_entropy_on_normalised_logits_both_directions():
    gen = torch.Generator().manual_seed(0)
    x, y, tau = torch.randn(9, 12, generator=gen), torch.randn(9, 12, generator=gen), 0.1
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / tau
    labels = torch.arange(9)
    torch.testing.assert_close(info_nce(x, y, tau), F.cross_entropy(logits, labels))
    torch.testing.assert_close(info_nce(y, x, tau), F.cross_entropy(logits.T, labels))
    both = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(info_nce(x, y, tau, symmetric=True), both)


def test_info_nce_with_gathered_keys_equals_the_block_of_the_full_batch():
    # a rank holding queries 8..15 against all 24 keys gives the mean of those rows of the full loss
    gen = torch.Generator().manual_seed(1)
    x, y, tau = torch.randn(24, 16, generator=gen), torch.randn(24, 16, generator=gen), 0.1
    logits = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / tau
    per_row = F.cross_entropy(logits, torch.arange(24), reduction="none")
    torch.testing.assert_close(info_nce(x[8:16], y, tau, offset=8), per_row[8:16].mean())


def test_info_nce_at_4096_rows_on_the_reference_path():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(4096, 768, generator=gen), torch.randn(4096, 768, generator=gen)
    x64, y64 = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    expected = F.cross_entropy(x64 @ y64.T / 0.1, torch.arange(4096))
    torch.testing.assert_close(info_nce(x, y, 0.1).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_is_cross_entropy_over_cosine_logits(symmetric):
    torch.manual_seed(0)
    x, y, tau = torch.randn(6, 10), torch.randn(6, 10), 0.1
    xn, yn = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    rows = torch.stack([-(xn[i] @ yn[i] / tau) + torch.logsumexp(xn[i] @ yn.T / tau, 0) for i in range(6)])
    cols = torch.stack([-(yn[i] @ xn[i] / tau) + torch.logsumexp(yn[i] @ xn.T / tau, 0) for i in range(6)])
    expected = (rows.mean() + cols.mean()) / 2 if symmetric else rows.mean()
    torch.testing.assert_close(info_nce(x, y, tau, symmetric), expected)


def test_info_nce_computes_in_fp32_for_bf16_inputs():
    torch.manual_seed(0)
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    loss = info_nce(x.bfloat16(), y.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, info_nce(x.bfloat16().float(), y.bfloat16().float(), 0.1))


def peak_extra_bytes(rows: int) -> int:
    x = torch.randn(rows, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(rows, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    info_nce(x, y, 0.1, symmetric=True).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.gpu
def test_info_nce_triton_memory_grows_linearly_to_16k_rows(triton_path):
    small, large = peak_extra_bytes(8192), peak_extra_bytes(16384)
    assert large < 2.5 * small, f"8k rows: {small / 2**20:.0f} MiB, 16k rows: {large / 2**20:.0f} MiB (B^2 would be x4)"
    assert large < 16384 * 16384 * 4, "more than one fp32 B x B matrix"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(4, 3), 0.1, offset=1), "offset: 1 puts positives"),
        (
            lambda: info_nce(torch.zeros(4, 3), torch.zeros(6, 3), 0.1, symmetric=True),
            "symmetric: needs x and y of one shape",
        ),
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(6, 2), 0.1), r"y: expected shape \(\*, 3\)"),
    ],
)
def test_info_nce_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(3, 3), 0.1), "positives of 4 queries outside 3 keys"),
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(4, 3), 0.0), "tau: must be > 0"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
