"""The weighted sampler of App. B on an imbalanced multi-label set: weights by the formula, draw frequencies
proportional to them, classes balanced, ranks holding disjoint slices of one deterministic global draw."""

import pytest
import torch

from mavil.data.sampling import BalancedRepeats, WeightedDraws, clip_weights

CLASS_COUNTS = (1000, 300, 50, 10, 2)


def imbalanced_labels() -> list[list[int]]:
    """1345 clips over 5 classes with CLASS_COUNTS clips each; 18 clips carry two labels, one carries none."""
    singles = [[0]] * 985 + [[1]] * 290 + [[2]] * 43 + [[3]] * 7 + [[4]] * 1
    pairs = [[0, 1]] * 10 + [[0, 2]] * 5 + [[2, 3]] * 2 + [[3, 4]] * 1
    return singles + pairs + [[]]


def w(c: int) -> float:
    return 1000 / (CLASS_COUNTS[c] + 0.01)


def label_matrix(labels: list[list[int]]) -> torch.Tensor:
    """-> (N, 5) 0/1 float."""
    matrix = torch.zeros(len(labels), len(CLASS_COUNTS))
    for clip, classes in enumerate(labels):
        matrix[clip, classes] = 1.0
    return matrix


def test_fixture_has_the_intended_class_counts():
    assert label_matrix(imbalanced_labels()).sum(0).tolist() == list(CLASS_COUNTS)


def test_clip_weight_is_the_sum_of_its_class_weights():
    labels = imbalanced_labels()
    weights = clip_weights(labels, num_classes=5)
    assert weights.shape == (1345,) and weights.dtype == torch.float64
    for clip in (0, 985, 1275, 1318, 1325, 1326, 1340, 1341, 1343):
        assert weights[clip].item() == pytest.approx(sum(w(c) for c in labels[clip]), rel=1e-12)
    assert weights[-1].item() == 0.0  # no label: weight 0, never drawn


def test_a_repeated_label_counts_once_and_bad_indices_raise():
    assert torch.equal(clip_weights([[0, 0], [0, 1]], 3), clip_weights([[0], [0, 1]], 3))
    with pytest.raises(ValueError, match="class indices"):
        clip_weights([[0], [3]], 3)


def test_draw_frequencies_follow_the_weights():
    """Chi-square over the clips against weight / sum(weight), within 5 standard deviations of its mean."""
    weights = clip_weights(imbalanced_labels(), 5)
    draws = WeightedDraws(weights, draws_per_epoch=200_000, seed=3).epoch(0)
    observed = torch.bincount(draws, minlength=len(weights)).double()
    assert observed[-1] == 0  # the unlabelled clip
    expected = draws.numel() * weights / weights.sum()
    drawable = weights > 0
    chi2 = ((observed - expected)[drawable] ** 2 / expected[drawable]).sum().item()
    dof = int(drawable.sum()) - 1
    assert abs(chi2 - dof) < 5 * (2 * dof) ** 0.5


def test_classes_are_far_more_balanced_in_the_draws_than_in_the_data():
    labels = imbalanced_labels()
    draws = WeightedDraws(clip_weights(labels, 5), draws_per_epoch=100_000, seed=0).epoch(0)
    drawn_per_class = label_matrix(labels)[draws].sum(0)  # (5,)
    raw = torch.tensor(CLASS_COUNTS, dtype=torch.float64)
    assert raw.max() / raw.min() == 500
    assert drawn_per_class.max() / drawn_per_class.min() < 2  # about 1000 weight per class, plus co-labels


@pytest.mark.parametrize("world_size, draws", [(2, 1000), (3, 1000), (4, 7)])
def test_ranks_hold_disjoint_slices_whose_union_is_the_global_draw(world_size, draws):
    weights = clip_weights(imbalanced_labels(), 5)
    global_draw = WeightedDraws(weights, draws, seed=5).epoch(2)
    per_rank = [
        WeightedDraws(weights, draws, rank=r, world_size=world_size, seed=5).epoch(2) for r in range(world_size)
    ]
    sizes = [len(p) for p in per_rank]
    assert sum(sizes) == draws and max(sizes) - min(sizes) <= 1
    rebuilt = torch.empty(draws, dtype=torch.long)
    for rank, part in enumerate(per_rank):
        rebuilt[rank::world_size] = part  # each draw position goes to exactly one rank
    assert torch.equal(rebuilt, global_draw)


def test_draws_are_deterministic_per_seed_and_epoch():
    weights = clip_weights(imbalanced_labels(), 5)
    sampler = WeightedDraws(weights, 5000, rank=1, world_size=2, seed=11)
    assert torch.equal(sampler.epoch(4), WeightedDraws(weights, 5000, rank=1, world_size=2, seed=11).epoch(4))
    assert not torch.equal(sampler.epoch(4), sampler.epoch(5))
    assert not torch.equal(sampler.epoch(4), WeightedDraws(weights, 5000, rank=1, world_size=2, seed=12).epoch(4))
    assert sampler.epoch(0).dtype == torch.long


def test_invalid_weights_and_ranks_raise():
    with pytest.raises(ValueError, match="weights"):
        WeightedDraws(torch.zeros(4))
    with pytest.raises(ValueError, match="weights"):
        WeightedDraws(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="rank"):
        WeightedDraws(torch.ones(4), rank=2, world_size=2)


def spc_like_labels() -> list[list[int]]:
    """Class 2 plays SPC's "unknown" (the largest); two clips carry no label."""
    return [[0]] * 7 + [[1]] * 30 + [[2]] * 40 + [[3]] * 3 + [[]] * 2


def test_balanced_repeats_lift_small_classes_to_the_fraction_of_the_reference():
    labels = spc_like_labels()
    order = BalancedRepeats(labels, fraction=0.5, seed=4).global_order(epoch=0)
    first = torch.tensor([classes[0] if classes else -1 for classes in labels])[order]
    assert [int((first == c).sum()) for c in range(4)] == [20, 30, 40, 20]  # target ceil(0.5 * 40) = 20
    assert int((first == -1).sum()) == 2
    per_clip = torch.bincount(order, minlength=len(labels))
    assert sorted(per_clip[:7].tolist()) == [2] + [3] * 6  # 20 over 7 clips: each 2 or 3 times
    assert per_clip[7:77].eq(1).all()  # classes at or above the target: once each
    assert set(per_clip[77:80].tolist()) <= {6, 7} and int(per_clip[77:80].sum()) == 20


def test_balanced_repeats_reference_class_by_index_and_ranks_split_one_order():
    labels = spc_like_labels()
    order = BalancedRepeats(labels, fraction=1.0, reference=1, seed=4).global_order(epoch=2)
    assert len(order) == 30 + 30 + 40 + 30 + 2  # every class lifted to class 1's 30 clips
    slices = [BalancedRepeats(labels, 1.0, 1, rank, 3, seed=4).epoch(2) for rank in range(3)]
    assert torch.equal(torch.sort(torch.cat(slices)).values, torch.sort(order).values)
    again = BalancedRepeats(labels, 1.0, 1, seed=4)
    assert torch.equal(again.global_order(2), order) and not torch.equal(again.global_order(3), order)
