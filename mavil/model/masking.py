"""Random per-sample masking (MAE's shuffle-and-keep), with an optional second, disjoint view.

Each sample's tokens are ranked by uniform noise. The first K ranks are the visible view, ranks
K..2K-1 the second view used by the intra-modal contrastive loss (drawn from the masked-out
tokens, so the two views never share a token), and ids_restore maps every token to its rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import num_visible


@dataclass
class Masking:
    ids_keep: torch.Tensor  # (B, K) int64: the visible tokens, in shuffled order
    ids_restore: torch.Tensor  # (B, N) int64: the rank of each token in the shuffled order
    mask: torch.Tensor  # (B, N) float: 1 where the token is hidden from the encoder, 0 where visible
    ids_keep_second: torch.Tensor | None = None  # (B, K) int64: the second view, disjoint from ids_keep

    @property
    def num_visible(self) -> int:
        return self.ids_keep.shape[1]


def random_masking(
    batch: int,
    tokens: int,
    mask_ratio: float,
    device: torch.device | str,
    second_view: bool = False,
    generator: torch.Generator | None = None,
) -> Masking:
    visible = num_visible(tokens, mask_ratio)
    if second_view and 2 * visible > tokens:
        raise ValueError(f"two disjoint views of {visible} tokens do not fit in {tokens} (mask_ratio {mask_ratio})")
    noise = torch.rand(batch, tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)  # (B, N): tokens in the order they are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N): the inverse permutation
    mask = (ids_restore >= visible).float()
    second = ids_shuffle[:, visible : 2 * visible] if second_view else None
    return Masking(ids_shuffle[:, :visible], ids_restore, mask, second)


def time_frequency_keep(
    batch: int, grid: tuple[int, int], drop_time: float, drop_freq: float, device: torch.device | str
) -> torch.Tensor:
    """Audio fine-tuning masking (Audio-MAE's): drop whole rows of time patches and columns of frequency patches.

    grid = (time rows, frequency columns) of the patch grid; each sample keeps round(rows * (1 - drop_time))
    random rows and round(columns * (1 - drop_freq)) random columns. -> (B, kept rows * kept columns) token ids
    (row-major ids, row * columns + column), the same count for every sample.
    """
    rows, columns = grid
    keep_rows, keep_columns = num_visible(rows, drop_time), num_visible(columns, drop_freq)
    kept_rows = torch.rand(batch, rows, device=device).argsort(dim=1)[:, :keep_rows]  # (B, kr)
    kept_columns = torch.rand(batch, columns, device=device).argsort(dim=1)[:, :keep_columns]  # (B, kc)
    return (kept_rows[:, :, None] * columns + kept_columns[:, None, :]).flatten(1)  # (B, kr * kc)
