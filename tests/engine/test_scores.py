"""Evaluation scores against scikit-learn (mAP, accuracy), retrieval on known rankings, and the gather of
predictions across two gloo ranks holding different row counts."""

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, average_precision_score

from mavil.engine.launch import free_port
from mavil.engine.scores import (
    _true_key_ranks,
    accuracy,
    chance_recall,
    gather_predictions,
    mean_average_precision,
    retrieval_metrics,
)

ROWS = (5, 3)  # rank 0 holds 5 predictions, rank 1 holds 3 (a partial last batch)


def random_case(seed: int, n: int = 200, classes: int = 12, decimals: int | None = None):
    """-> (scores (n, classes), targets (n, classes) 0/1), every class with a positive; rounded scores tie."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, classes, generator=gen, dtype=torch.float64)
    targets = (torch.rand(n, classes, generator=gen) < torch.linspace(0.02, 0.5, classes)).long()
    targets[seed % n, :] = 1  # no class without a positive
    return (scores if decimals is None else scores.round(decimals=decimals)), targets


def sklearn_ap(scores: torch.Tensor, targets: torch.Tensor):
    return average_precision_score(targets.numpy(), scores.numpy(), average=None)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_average_precision_equals_sklearn(seed, decimals):
    scores, targets = random_case(seed, decimals=decimals)
    mean, per_class = mean_average_precision(scores, targets)
    expected = sklearn_ap(scores, targets)
    torch.testing.assert_close(per_class, torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    assert mean == pytest.approx(average_precision_score(targets.numpy(), scores.numpy(), average="macro"), abs=1e-12)


def test_average_precision_of_float32_scores_and_bool_targets_equals_sklearn():
    scores, targets = random_case(7, decimals=1)
    scores32 = scores.float()
    _, per_class = mean_average_precision(scores32, targets.bool())
    torch.testing.assert_close(per_class, torch.from_numpy(sklearn_ap(scores32, targets)), rtol=1e-12, atol=1e-12)


def test_perfect_and_reversed_rankings():
    targets = torch.tensor([[1, 1], [1, 0], [0, 0], [0, 1]])
    perfect = torch.tensor([[0.9, 0.9], [0.8, 0.2], [0.1, 0.1], [0.0, 0.5]])
    mean, per_class = mean_average_precision(perfect, targets)
    assert mean == 1.0 and per_class.tolist() == [1.0, 1.0]
    reversed_ = -perfect  # class 0: positives ranked 3rd and 4th -> AP = (1/3 + 2/4) / 2
    _, per_class = mean_average_precision(reversed_, targets)
    assert per_class[0].item() == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_all_tied_scores_give_the_positive_rate():
    targets = torch.tensor([[1], [0], [0], [1], [0]])
    mean, _ = mean_average_precision(torch.zeros(5, 1), targets)
    assert mean == pytest.approx(2 / 5)


def test_class_without_positive_is_nan_and_left_out_of_the_mean():
    scores, targets = random_case(3, decimals=1)
    targets[:, 4] = 0
    mean, per_class = mean_average_precision(scores, targets)
    assert torch.isnan(per_class[4]) and not torch.isnan(per_class[torch.arange(12) != 4]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: "No positive class found in y_true"; it scores the class 0
        expected = sklearn_ap(scores, targets)
    keep = [c for c in range(12) if c != 4]
    assert mean == pytest.approx(expected[keep].mean(), abs=1e-12)


def test_no_positive_at_all_raises():
    with pytest.raises(ValueError, match="no class"):
        mean_average_precision(torch.rand(6, 3), torch.zeros(6, 3))


def test_mean_average_precision_rejects_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        mean_average_precision(torch.rand(4, 2), torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="shape"):
        mean_average_precision(torch.rand(4, 2), torch.ones(4, 3))


@pytest.mark.parametrize("one_hot", [False, True])
def test_accuracy_equals_sklearn(one_hot):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 10, generator=gen)
    labels = torch.randint(0, 10, (300,), generator=gen)
    labels[:100] = scores[:100].argmax(1)  # a third right by construction, the rest by chance
    given = torch.nn.functional.one_hot(labels, 10).float() if one_hot else labels
    expected = accuracy_score(labels.numpy(), scores.argmax(1).numpy())
    assert accuracy(scores, given) == pytest.approx(expected, abs=1e-12)


def test_identity_embeddings_retrieve_perfectly_both_ways():
    metrics = retrieval_metrics(torch.eye(20), torch.eye(20), both_directions=True)
    for prefix in ("a2v_", "v2a_"):
        assert metrics[f"{prefix}R@1"] == metrics[f"{prefix}R@5"] == metrics[f"{prefix}R@10"] == 1.0
        assert metrics[f"{prefix}median_rank"] == 1.0
    assert set(retrieval_metrics(torch.eye(20), torch.eye(20))) == {"a2v_R@1", "a2v_R@5", "a2v_R@10", "a2v_median_rank"}


def test_known_ranks():
    """Keys are the basis, every query a permutation of the values 12..1 (one norm): query i's own key
    ranks rank_of_true[i]."""
    n = 12
    rank_of_true = [1, 2, 3, 1, 6, 12, 1, 4, 11, 2, 7, 1]
    queries = torch.zeros(n, n)
    for i, r in enumerate(rank_of_true):
        own = float(n + 1 - r)  # the r-th largest value
        others = [float(v) for v in range(n, 0, -1) if v != own]
        queries[i] = torch.tensor(others[:i] + [own] + others[i:])
    metrics = retrieval_metrics(queries, torch.eye(n) * 3.0)
    assert metrics["a2v_R@1"] == pytest.approx(4 / 12)
    assert metrics["a2v_R@5"] == pytest.approx(8 / 12)
    assert metrics["a2v_R@10"] == pytest.approx(10 / 12)
    assert metrics["a2v_median_rank"] == 2.5  # sorted ranks: 1 1 1 1 2 2 | 3 4 6 7 11 12


def test_video_to_audio_ranks_the_transposed_similarity():
    queries = torch.tensor([[4.0, 3, 2, 1], [4, 3, 2, 1], [1, 2, 3, 4], [3, 4, 1, 2]])
    similarity = torch.nn.functional.normalize(queries, dim=1)  # against keys = the basis; rows share one norm
    assert _true_key_ranks(similarity).tolist() == [1, 2, 2, 3]
    assert _true_key_ranks(similarity.T).tolist() == [2, 3, 1, 2]  # column 0: 4 ties 4 -> pessimistic 2
    gen = torch.Generator().manual_seed(1)
    audio, video = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
    both = retrieval_metrics(audio, video, both_directions=True)
    swapped = retrieval_metrics(video, audio)
    assert {k: both["v2a_" + k[4:]] for k in swapped} == pytest.approx(swapped)


def test_ties_rank_pessimistically_so_constant_embeddings_score_no_better_than_last():
    metrics = retrieval_metrics(torch.ones(8, 4), torch.ones(8, 4))
    assert metrics["a2v_R@1"] == 0.0 and metrics["a2v_R@5"] == 0.0 and metrics["a2v_R@10"] == 1.0
    assert metrics["a2v_median_rank"] == 8.0


def test_random_embeddings_score_about_chance():
    gen = torch.Generator().manual_seed(0)
    n = 400
    metrics = retrieval_metrics(torch.randn(n, 32, generator=gen), torch.randn(n, 32, generator=gen))
    assert chance_recall(n, 1) == 1 / n and chance_recall(5, 10) == 1.0
    assert metrics["a2v_R@10"] == pytest.approx(chance_recall(n, 10), abs=0.03)
    assert metrics["a2v_median_rank"] == pytest.approx(n / 2, rel=0.2)


def test_gather_without_process_group_returns_the_input():
    rows = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(gather_predictions(rows), rows)
    assert torch.equal(gather_predictions(rows, 2), rows[:2])


def full_predictions():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(sum(ROWS), 4, 3, generator=gen), torch.arange(sum(ROWS))


def gather_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    scores, ids = full_predictions()
    mine = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
    buffer = torch.full((6,), -1, dtype=torch.long)  # a fixed-size buffer, its first ROWS[rank] rows real
    buffer[: ROWS[rank]] = ids[mine]
    results[rank] = (gather_predictions(scores[mine]), gather_predictions(buffer, ROWS[rank]))
    dist.destroy_process_group()


def test_two_ranks_with_uneven_rows_gather_the_concatenation():
    results = mp.Manager().dict()
    mp.spawn(gather_worker, args=(free_port(), results), nprocs=2, join=True)
    scores, ids = full_predictions()
    for rank in (0, 1):
        gathered_scores, gathered_ids = results[rank]
        assert torch.equal(gathered_scores, scores)  # (8, 4, 3): every row once, in rank order
        assert torch.equal(gathered_ids, ids)
