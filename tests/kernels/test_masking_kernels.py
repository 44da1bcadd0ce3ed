import pytest
import torch

from mavil.kernels import masked_gather, masked_restore

from .conftest import DEVICE, DTYPES, assert_close, grads

# (B, N, K, D): odd D, K = 1, K = N - 1, B = 1, and the paper's D with a short sequence
SHAPES = [(3, 13, 5, 37), (2, 9, 1, 16), (2, 9, 8, 24), (1, 7, 3, 5), (2, 6, 2, 768)]


def random_ids(batch, tokens, keep, generator):
    shuffle = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
    return shuffle[:, :keep].to(DEVICE), shuffle.argsort(dim=1).to(DEVICE)


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
