"""masked_gather: the Triton kernel against the PyTorch reference, the reference against a loop, its argument checks."""

import pytest
import torch

from mavil.kernels import masked_gather

from .conftest import DEVICE, DTYPES, SHAPES, assert_close, grads, random_ids


@DTYPES
@pytest.mark.parametrize("with_pos", [True, False], ids=["pos", "nopos"])
@pytest.mark.parametrize("batch, tokens, keep, dim", SHAPES)
def test_masked_gather_matches_reference(triton_path, batch, tokens, keep, dim, dtype, with_pos):
    gen = torch.Generator().manual_seed(batch * 1000 + tokens * 10 + keep)
    # x laid out as the patch embedding leaves it: (B, D, N) transposed, so its D stride is not 1
    x = torch.randn(batch, dim, tokens, generator=gen).to(DEVICE, dtype).transpose(1, 2).requires_grad_()
    pos = torch.randn(tokens, dim, generator=gen).to(DEVICE).requires_grad_() if with_pos else None
    ids_keep, _ = random_ids(batch, tokens, keep, gen)
    out = masked_gather(x, ids_keep, pos)
    expected = triton_path(lambda: masked_gather(x, ids_keep, pos))
    assert_close(out, expected, dtype)
    inputs = (x, pos) if with_pos else (x,)
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE, dtype)
    for got, want in zip(grads(out, inputs, grad_out), grads(expected, inputs, grad_out)):
        assert_close(got, want, dtype)


def test_masked_gather_with_positions_matches_a_loop():
    torch.manual_seed(0)
    x, pos = torch.randn(3, 11, 7, requires_grad=True), torch.randn(11, 7, requires_grad=True)
    ids_keep = torch.stack([torch.randperm(11)[:4] for _ in range(3)])
    out = masked_gather(x, ids_keep, pos)
    expected = torch.stack([torch.stack([x[b, n] + pos[n] for n in ids_keep[b]]) for b in range(3)])
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    grad_x = torch.zeros(3, 11, 7)
    grad_pos = torch.zeros(11, 7)
    for b in range(3):
        for k, n in enumerate(ids_keep[b]):
            grad_x[b, n] += grad[b, k]
            grad_pos[n] += grad[b, k]
    torch.testing.assert_close(x.grad, grad_x)
    torch.testing.assert_close(pos.grad, grad_pos)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(3, 2, dtype=torch.long)),
            r"ids_keep: expected shape \(2, \*\)",
        ),
        (lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(2, 2)), "int32 or int64"),
        (
            lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, 3)),
            r"pos: expected shape \(5, 3\)",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
