"""The PyTorch references of mavil.kernels against explicit, loop-level definitions of each op."""

import pytest
import torch
import torch.nn.functional as F

from mavil.kernels import info_nce, masked_gather, masked_mse, masked_restore


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
            lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(3, 2, dtype=torch.long)),
            r"ids_keep: expected shape \(2, \*\)",
        ),
        (lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(2, 2)), "int32 or int64"),
        (
            lambda: masked_gather(torch.zeros(2, 5, 3), torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, 3)),
            r"pos: expected shape \(5, 3\)",
        ),
        (
            lambda: masked_restore(torch.zeros(2, 2, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(4)),
            r"mask_token: expected shape \(3\)",
        ),
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(3, 3), 0.1), "positives of 4 queries outside 3 keys"),
        (lambda: info_nce(torch.zeros(4, 3), torch.zeros(4, 3), 0.0), "tau: must be > 0"),
        (
            lambda: masked_mse(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.zeros(2, 5)),
            r"mask: expected shape \(2, 4\)",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
