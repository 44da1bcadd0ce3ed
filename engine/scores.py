"""Evaluation scores: mAP (AudioSet), top-1 accuracy (VGGSound, ESC-50, Speech Commands), audio-to-video
retrieval recall (MSR-VTT, YouCook), and the all-gather that collects every rank's predictions first.

Pure functions of tensors, vectorised in torch, on whatever device the tensors live: the evaluation loop
keeps predictions on the GPU and calls these once at the end. Definitions follow scikit-learn where it has
one (`average_precision_score`, `accuracy_score`); the tests check against it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

RECALL_AT = (1, 5, 10)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    """-> (mAP over the classes with a positive, AP per class (C,) float64, nan where a class has none).

    scores (N, C): any real scores (logits or probabilities: AP depends only on the order);
    targets (N, C): 0/1. AP is scikit-learn's step-wise one: sort by score descending, take one threshold
    per distinct score (tied samples enter together), AP = sum_k (recall_k - recall_{k-1}) * precision_k.
    scikit-learn gives a class with no positive AP 0 (with a warning) and counts it in the macro mean;
    here it is nan and left out of the mean, so that a class missing from a small eval set does not
    drag the score down. Raises ValueError when no class has a positive.
    """
    _check_pair(scores, targets, "targets")
    if scores.isnan().any():
        raise ValueError("scores: contains nan, the ranking is undefined")
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets: expected 0/1 entries only (mAP is defined for hard labels)")
    positives = targets.sum(0, dtype=torch.float64)  # (C,)
    if not (positives > 0).any():
        raise ValueError(f"targets: no class among {targets.shape[1]} has a positive sample, mAP is undefined")
    per_class = _precision_sum(scores, targets) / positives  # (C,), nan where 0 / 0
    return float(per_class[positives > 0].mean()), per_class


def _precision_sum(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-> (C,) sum over positives of the precision at their score's threshold, i.e. AP * positives.

    A tie group enters the ranking whole, so each positive takes the precision at the last row of its tie
    group; the sum over a group's positives is (recall step) * precision of scikit-learn's formula."""
    n = scores.shape[0]
    sorted_scores, order = _at_least_fp32(scores).sort(dim=0, descending=True)  # (N, C) each
    sorted_targets = targets.gather(0, order).to(torch.float64)  # (N, C)
    true_positives = sorted_targets.cumsum(0)  # (N, C): positives at or above each row
    rows = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(order)  # (N, C)
    group_ends = torch.ones_like(order, dtype=torch.bool)  # (N, C): last row of each tie group
    group_ends[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # the last row of the group holding row k: the first group end at or below k (reverse cumulative min)
    group_end = torch.where(group_ends, rows, n).flip(0).cummin(0).values.flip(0)  # (N, C)
    precision_at_end = true_positives.gather(0, group_end) / (group_end + 1)  # (N, C)
    return (sorted_targets * precision_at_end).sum(0)


def _at_least_fp32(scores: torch.Tensor) -> torch.Tensor:
    """scores in a dtype that keeps every value distinct that was distinct (float64 stays, others to float32)."""
    return scores if scores.dtype == torch.float64 else scores.float()


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy, a fraction in [0, 1]. scores (N, C); labels (N,) class indices or (N, C) one-hot
    (their argmax is the class). Among tied top scores torch.argmax decides (the first index on the CPU)."""
    if labels.dim() == 2:
        _check_pair(scores, labels, "labels")
        labels = labels.argmax(1)
    elif scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"scores, labels: expected (N, C) and (N,) or (N, C), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores: no samples, accuracy is undefined")
    return float((scores.argmax(1) == labels).to(torch.float64).mean())


def retrieval_metrics(
    query_emb: torch.Tensor, key_emb: torch.Tensor, both_directions: bool = False
) -> dict[str, float]:
    """Audio-to-video retrieval: query i (audio) matches key i (video) of (N, H) embeddings.

    -> {"a2v_R@1", "a2v_R@5", "a2v_R@10": fractions in [0, 1], "a2v_median_rank": float}; with
    both_directions also the same under "v2a_" (video queries against audio keys), from the same
    cosine-similarity matrix. Ranks count from 1 and ties are pessimistic: a key scoring equal to the
    true one ranks ahead of it, so collapsed (constant) embeddings rank last, never first.
    The median of an even count is the mean of the two middle ranks (as numpy's).
    """
    if query_emb.dim() != 2 or query_emb.shape != key_emb.shape or query_emb.shape[0] == 0:
        raise ValueError(
            f"query_emb, key_emb: expected two (N, H) tensors of one shape with N > 0, got "
            f"{tuple(query_emb.shape)} and {tuple(key_emb.shape)}"
        )
    similarity = F.normalize(query_emb.float(), dim=1) @ F.normalize(key_emb.float(), dim=1).T  # (N queries, N keys)
    metrics = _recalls(_true_key_ranks(similarity), "a2v_")
    if both_directions:
        metrics.update(_recalls(_true_key_ranks(similarity.T), "v2a_"))
    return metrics


def _true_key_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """similarity (N queries, N keys), the true key of query i on the diagonal -> (N,) its rank, 1 = best,
    ties pessimistic: 1 + the number of other keys scoring at least as high."""
    true_score = similarity.diagonal().unsqueeze(1)  # (N, 1)
    return (similarity >= true_score).sum(1)  # the true key itself counts as the 1


def _recalls(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """ranks (N,) -> R@k for k in RECALL_AT and the median rank, names prefixed."""
    metrics = {f"{prefix}R@{k}": float((ranks <= k).to(torch.float64).mean()) for k in RECALL_AT}
    metrics[f"{prefix}median_rank"] = float(ranks.to(torch.float64).quantile(0.5))
    return metrics


def chance_recall(n: int, k: int) -> float:
    """R@k of a random ranking of n keys with one true key: min(k, n) / n (R@1 of chance is 1/n)."""
    if n < 1 or k < 1:
        raise ValueError(f"n, k: expected positive counts, got n={n}, k={k}")
    return min(k, n) / n


def gather_predictions(tensor: torch.Tensor, count: int | None = None, group=None) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order: this rank's (n_r, ...) -> (sum of n_r, ...), on every rank.

    count: how many leading rows of `tensor` are real (default: all), for callers that fill a fixed-size
    buffer. Ranks may hold different row counts: each pads to the largest for the all-gather and the
    padding is cut away again, so no row appears twice. Callers pass only real rows: a loader that pads
    its last batch with repeated clips (as torch's DistributedSampler does) must cut them first; the DALI
    loader of this engine never pads, its last batch is partial. Without an initialised process group,
    or with one rank, returns the (trimmed) input. Not differentiable: for evaluation.
    """
    if count is not None and not 0 <= count <= tensor.shape[0]:
        raise ValueError(f"count: {count} real rows in a tensor of {tensor.shape[0]}")
    real = tensor if count is None else tensor[:count]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return real
    counts = _row_counts(real.shape[0], real.device, group)
    padded = real.new_zeros((max(counts), *real.shape[1:]))  # all_gather needs one shape on every rank
    padded[: real.shape[0]] = real
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def _row_counts(rows: int, device: torch.device, group=None) -> list[int]:
    """-> every rank's row count, in rank order."""
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.long, device=device), group=group)
    return [int(c) for c in counts]


def _check_pair(scores: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if scores.dim() != 2 or other.shape != scores.shape or scores.shape[0] == 0:
        raise ValueError(
            f"scores, {name}: expected two (N, C) tensors of one shape with N > 0, got "
            f"{tuple(scores.shape)} and {tuple(other.shape)}"
        )
