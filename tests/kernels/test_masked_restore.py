"""masked_restore: the Triton kernel against the PyTorch reference, the reference against a loop, the round trip
with masked_gather, its argument checks."""

import pytest
import torch

from mavil.kernels import masked_gather, masked_restore

from .conftest import DEVICE, DTYPES, SHAPES, assert_close, grads, random_ids


@DTYPES
@pytest.mark.parametrize("with_pos", [True, False], ids=["pos", "nopos"])
@pytest.mark.parametrize("batch, tokens, keep, dim", SHAPES)
def test_masked_restore_matches_reference(triton_path, batch, tokens, keep, dim, dtype, with_pos):
    gen = torch.Generator().manual_seed(batch * 1000 + tokens * 10 + keep + 1)
    # x_vis as the decoder passes it: the tokens after [CLS], so its batch stride is (K + 1) * D
    x_vis = torch.randn(batch, keep + 1, dim, generator=gen).to(DEVICE, dtype)[:, 1:].requires_grad_()
    mask_token = torch.randn(dim, generator=gen).to(DEVICE, dtype).requires_grad_()
    pos = torch.randn(tokens, dim, generator=gen).to(DEVICE).requires_grad_() if with_pos else None
    _, ids_restore = random_ids(batch, tokens, keep, gen)
    out = masked_restore(x_vis, ids_restore, mask_token, pos)
    expected = triton_path(lambda: masked_restore(x_vis, ids_restore, mask_token, pos))
    assert_close(out, expected, dtype)
    inputs = (x_vis, mask_token, pos) if with_pos else (x_vis, mask_token)
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE, dtype)
    for got, want in zip(grads(out, inputs, grad_out), grads(expected, inputs, grad_out)):
        assert_close(got, want, dtype)


def test_gather_then_restore_round_trips_on_the_triton_path(triton_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 8, generator=gen).to(DEVICE)
    ids_keep, ids_restore = random_ids(2, 11, 4, gen)
    restored = masked_restore(masked_gather(x, ids_keep), ids_restore, torch.zeros(8, device=DEVICE))
    visible = ids_restore < 4
    assert torch.equal(restored[visible], x[visible])
    assert torch.equal(restored[~visible], torch.zeros_like(restored[~visible]))


def test_masked_restore_matches_a_loop():
    torch.manual_seed(0)
    batch, tokens, visible, dim = 2, 9, 3, 5
    x_vis, mask_token = torch.randn(batch, visible, dim), torch.randn(dim)
    pos = torch.randn(tokens, dim)
    ids_restore = torch.stack([torch.randperm(tokens) for _ in range(batch)])
    out = masked_restore(x_vis, ids_restore, mask_token, pos)
    for b in range(batch):
        for n in range(tokens):
            r = ids_restore[b, n]
            source = x_vis[b, r] if r < visible else mask_token
            torch.testing.assert_close(out[b, n], source + pos[n])


def test_masked_restore_gradients():
    torch.manual_seed(0)
    batch, tokens, visible, dim = 2, 6, 2, 3
    x_vis = torch.randn(batch, visible, dim, requires_grad=True)
    mask_token = torch.randn(dim, requires_grad=True)
    pos = torch.randn(tokens, dim, requires_grad=True)
    ids_restore = torch.stack([torch.randperm(tokens) for _ in range(batch)])
    grad = torch.randn(batch, tokens, dim)
    masked_restore(x_vis, ids_restore, mask_token, pos).backward(grad)
    masked = ids_restore >= visible
    torch.testing.assert_close(mask_token.grad, grad[masked].sum(0))  # sum over every masked position
    torch.testing.assert_close(pos.grad, grad.sum(0))
    for b in range(batch):
        for n in range(tokens):
            if ids_restore[b, n] < visible:
                torch.testing.assert_close(x_vis.grad[b, ids_restore[b, n]], grad[b, n])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: masked_restore(torch.zeros(2, 2, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(4)),
            r"mask_token: expected shape \(3\)",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
