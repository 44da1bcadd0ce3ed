import pytest
import torch

from mavil.config import num_visible
from mavil.kernels import masked_gather, masked_restore
from mavil.model.masking import random_masking


@pytest.mark.parametrize("tokens, ratio, visible", [(512, 0.8, 102), (784, 0.8, 157), (512, 0.7, 154), (784, 0.7, 235)])
def test_visible_counts_are_the_papers(tokens, ratio, visible):
    # App. B: 103 audio and 158 video tokens with [CLS] at 80%; Fig. 3: 154 and 235 patches at 70%
    assert num_visible(tokens, ratio) == visible


@pytest.mark.parametrize("batch, tokens, ratio", [(1, 512, 0.8), (4, 784, 0.8), (3, 33, 0.7), (2, 10, 0.5)])
def test_masking_invariants(batch, tokens, ratio):
    torch.manual_seed(batch * tokens)
    m = random_masking(batch, tokens, ratio, "cpu", second_view=True)
    visible = num_visible(tokens, ratio)
    assert m.ids_keep.shape == m.ids_keep_second.shape == (batch, visible)
    assert m.ids_restore.shape == m.mask.shape == (batch, tokens)
    for b in range(batch):
        first, second = set(m.ids_keep[b].tolist()), set(m.ids_keep_second[b].tolist())
        assert len(first) == len(second) == visible  # no repeats within a view
        assert not first & second  # the two views are disjoint
        hidden = set(torch.nonzero(m.mask[b]).flatten().tolist())
        assert hidden == set(range(tokens)) - first  # mask is 1 exactly on the tokens the encoder does not see
        assert second <= hidden
    assert m.mask.sum(dim=1).eq(tokens - visible).all()


def test_restore_is_the_inverse_of_shuffle():
    torch.manual_seed(0)
    batch, tokens, dim = 3, 20, 5
    m = random_masking(batch, tokens, 0.75, "cpu")
    x = torch.randn(batch, tokens, dim)
    kept = masked_gather(x, m.ids_keep)
    mask_token = torch.full((dim,), float("nan"))
    restored = masked_restore(kept, m.ids_restore, mask_token)
    visible = m.mask == 0
    assert torch.equal(restored[visible], x[visible])  # every visible token is back in its own place
    assert torch.isnan(restored[~visible]).all()  # and only masked places hold the [MASK] token


def test_second_view_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        random_masking(2, 10, 0.4, "cpu", second_view=True)


def test_masks_differ_per_sample_and_follow_the_seed():
    torch.manual_seed(1)
    a = random_masking(4, 64, 0.8, "cpu")
    torch.manual_seed(1)
    b = random_masking(4, 64, 0.8, "cpu")
    assert torch.equal(a.ids_keep, b.ids_keep)
    assert len({tuple(sorted(row.tolist())) for row in a.ids_keep}) == 4
