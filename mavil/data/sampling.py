"""Balanced sampling for fine-tuning on the unbalanced sets (AS-2M, VGGSound), paper App. B and Table 10;
class repetition for SPC (Table 10's *, `BalancedRepeats` below).

A class c weighs w_c = 1000 / (count_c + 0.01), count_c the number of training clips labelled c; a clip
weighs the sum of its classes' weights. Each epoch draws `draws_per_epoch` clips (200,000 in the paper)
with replacement, with probability proportional to the clip weights. The draw is one global draw, seeded
by (seed, epoch) and identical on every rank; rank r takes every world_size-th draw from r, so the ranks
hold disjoint slices of it and together exactly the global draw.

A clip with no label weighs 0 (the empty sum of the formula, as in the AST/PSLA sampler the paper
follows) and is never drawn: it carries no positive for the class-balanced objective.
"""

from __future__ import annotations

import math

import torch

CLASS_WEIGHT_SCALE, COUNT_EPSILON = 1000.0, 0.01
# torch's CPU generator keeps only the low 32 bits of its seed (seeds s and s + 2**32 draw alike), so (seed, epoch)
# map into 32 bits: seed * golden-ratio constant + epoch. For one seed, every epoch gets its own stream; the
# multiplier spreads seeds apart (seeds < 2000 x epochs < 1000 give 2M distinct generator seeds).
SEED_MULTIPLIER, SEED_BITS = 0x9E3779B9, 32


def class_weights(class_counts: torch.Tensor) -> torch.Tensor:
    """class_counts (C,) clips per class -> (C,) float64 w_c = 1000 / (count_c + 0.01)."""
    return CLASS_WEIGHT_SCALE / (class_counts.to(torch.float64) + COUNT_EPSILON)


def clip_weights(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    """labels: per clip, its class indices -> (N,) float64 clip weights, sum of w_c over the clip's classes
    (a class listed twice for one clip counts once; a clip with no label weighs 0)."""
    pairs = [(clip, c) for clip, classes in enumerate(labels) for c in sorted(set(classes))]
    clip_ids = torch.tensor([clip for clip, _ in pairs], dtype=torch.long)  # (P,) one row per (clip, class)
    class_ids = torch.tensor([c for _, c in pairs], dtype=torch.long)  # (P,)
    if len(pairs) and not (0 <= int(class_ids.min()) and int(class_ids.max()) < num_classes):
        raise ValueError(
            f"labels: class indices must lie in [0, {num_classes}), got {int(class_ids.min())}..{int(class_ids.max())}"
        )
    w = class_weights(torch.bincount(class_ids, minlength=num_classes))  # (C,)
    return torch.zeros(len(labels), dtype=torch.float64).index_add_(0, clip_ids, w[class_ids])


class WeightedDraws:
    """This rank's clip indices per epoch: a slice of one global weighted draw with replacement.

    Ranks get ceil or floor of draws_per_epoch / world_size indices; where world_size does not divide
    draws_per_epoch, the first ranks hold one more, and the loop must agree on a common step count
    (e.g. drop each rank's last partial batch). torch.multinomial takes at most 2**24 clips (AS-2M: 2M).
    """

    def __init__(
        self, weights: torch.Tensor, draws_per_epoch: int = 200_000, rank: int = 0, world_size: int = 1, seed: int = 0
    ):
        if weights.dim() != 1 or not torch.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
            raise ValueError("weights: expected a (N,) tensor of finite, non-negative weights, some positive")
        if draws_per_epoch < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"draws_per_epoch={draws_per_epoch}, rank={rank}, world_size={world_size}: "
                f"expected draws >= 1 and 0 <= rank < world_size"
            )
        self.weights = weights.detach().to("cpu", torch.float64)  # (N,) drawn on the CPU: the same on every rank
        self.draws_per_epoch, self.rank, self.world_size, self.seed = draws_per_epoch, rank, world_size, seed

    def global_draw(self, epoch: int) -> torch.Tensor:
        """-> (draws_per_epoch,) long, every rank's clip indices of this epoch, identical on all ranks."""
        return torch.multinomial(
            self.weights, self.draws_per_epoch, replacement=True, generator=epoch_generator(self.seed, epoch)
        )

    def epoch(self, epoch: int) -> torch.Tensor:
        """-> this rank's clip indices for the epoch (long): every world_size-th draw from position rank."""
        return self.global_draw(epoch)[self.rank :: self.world_size]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of (seed, epoch): the same on every rank, its own stream per epoch."""
    return torch.Generator().manual_seed((seed * SEED_MULTIPLIER + epoch) % 2**SEED_BITS)


class BalancedRepeats:
    """Table 10's * for SPC: "repeat and balance each class to 50% of the size of the unknown class".

    A clip's class is its first label. Each class with fewer clips than target = ceil(fraction * count of the
    reference class) (the largest class unless named: in SPC-1 that is "unknown") has its clips repeated, cycling
    through them in a new random order each epoch, up to `target`; larger classes and unlabelled clips appear
    once. The epoch's list is shuffled by (seed, epoch), identical on every rank; rank r takes every
    world_size-th clip from r, as `WeightedDraws` does.
    """

    def __init__(
        self,
        labels: list[list[int]],
        fraction: float,
        reference: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        first = torch.tensor([classes[0] if classes else -1 for classes in labels], dtype=torch.long)  # (N,)
        counts = torch.bincount(first[first >= 0]) if (first >= 0).any() else torch.zeros(1, dtype=torch.long)
        reference = int(counts.argmax()) if reference is None else reference
        self.target = math.ceil(fraction * int(counts[reference])) if reference < len(counts) else 0
        self.members = [torch.nonzero(first == c).flatten() for c in range(len(counts))]  # per class: its clips
        self.once = torch.nonzero(first < 0).flatten()  # unlabelled clips
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def global_order(self, epoch: int) -> torch.Tensor:
        """-> (M,) long, the epoch's clip indices for all ranks: the repeated classes, shuffled."""
        generator = epoch_generator(self.seed, epoch)
        parts = [self.once]
        for clips in self.members:
            if 0 < len(clips) < self.target:
                cycled = clips[torch.randperm(len(clips), generator=generator)].repeat(-(-self.target // len(clips)))
                parts.append(cycled[: self.target])
            else:
                parts.append(clips)
        order = torch.cat(parts)
        return order[torch.randperm(len(order), generator=generator)]

    def epoch(self, epoch: int) -> torch.Tensor:
        return self.global_order(epoch)[self.rank :: self.world_size]
