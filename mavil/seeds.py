"""The one rule that derives a run's random streams from its train.seed (a leaf: imports nothing)."""


def seed_for(seed: int, index: int) -> int:
    """The seed of stream `index` (an epoch, a rank) derived from `seed`: seed * 1000 + index.

    Used for each epoch's data order and augmentation (index: the epoch), each rank's masks and mixing (the rank)
    and, inside a loader, each rank's time shifts (seed: the epoch's, index: the rank)."""
    return seed * 1000 + index
