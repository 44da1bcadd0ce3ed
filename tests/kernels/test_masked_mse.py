"""masked_mse: the Triton kernel against the PyTorch reference, the reference against a loop, its argument checks."""

import pytest
import torch
import torch.nn.functional as F

from mavil.kernels import masked_mse

from .conftest import DEVICE, DTYPES, assert_close, grads


@DTYPES
@pytest.mark.parametrize("norm_pix", [False, True], ids=["raw", "normpix"])
@pytest.mark.parametrize("batch, tokens, dim", [(3, 7, 37), (1, 5, 256), (2, 4, 1536), (2, 9, 16)])
def test_masked_mse_matches_reference(triton_path, batch, tokens, dim, dtype, norm_pix):
    gen = torch.Generator().manual_seed(batch * 100 + tokens + dim)
    pred = torch.randn(batch, tokens, dim, generator=gen).to(DEVICE, dtype).requires_grad_()
    # the target as stage 2 passes it: fusion outputs after [CLS], batch stride (N + 1) * D
    target = (torch.randn(batch, tokens + 1, dim, generator=gen) * 3 + 1).to(DEVICE, dtype)[:, 1:]
    mask = (torch.rand(batch, tokens, generator=gen) > 0.4).float().to(DEVICE)
    mask[0, 0] = 1.0
    loss = masked_mse(pred, target, mask, norm_pix)
    expected = triton_path(lambda: masked_mse(pred, target, mask, norm_pix))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, expected, torch.float32 if dtype == torch.float32 else dtype)
    grad_loss = torch.tensor(1.7, device=DEVICE)
    assert_close(grads(loss, (pred,), grad_loss)[0], grads(expected, (pred,), grad_loss)[0], dtype)


def test_masked_mse_gradient_is_zero_on_visible_tokens(triton_path):
    pred = torch.randn(2, 6, 8, device=DEVICE, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.float32, device=DEVICE)
    (grad,) = torch.autograd.grad(masked_mse(pred, torch.randn(2, 6, 8, device=DEVICE), mask, True), pred)
    assert torch.equal(grad[mask == 0], torch.zeros_like(grad[mask == 0]))
    assert (grad[mask == 1].abs().sum(-1) > 0).all()


def test_masked_mse_with_a_target_that_needs_grad_uses_the_reference(triton_path):
    pred = torch.randn(2, 3, 4, device=DEVICE, requires_grad=True)
    target = torch.randn(2, 3, 4, device=DEVICE, requires_grad=True)
    loss = masked_mse(pred, target, torch.ones(2, 3, device=DEVICE))
    (grad_target,) = torch.autograd.grad(loss, target)
    assert torch.isfinite(grad_target).all() and grad_target.abs().sum() > 0


@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_mse_averages_over_masked_tokens_only(norm_pix):
    torch.manual_seed(0)
    pred, target = torch.randn(2, 7, 12), torch.randn(2, 7, 12) * 3 + 1
    mask = (torch.rand(2, 7) > 0.5).float()
    mask[0, 0] = 1.0
    errors = []
    for b in range(2):
        for n in range(7):
            if mask[b, n]:
                t = target[b, n]
                if norm_pix:
                    t = (t - t.mean()) / (t.var(unbiased=True) + 1e-6).sqrt()
                errors.append(F.mse_loss(pred[b, n], t))
    torch.testing.assert_close(masked_mse(pred, target, mask, norm_pix), torch.stack(errors).mean())


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: masked_mse(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.zeros(2, 5)),
            r"mask: expected shape \(2, 4\)",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
