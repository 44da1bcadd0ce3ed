"""Position schemes: "2d+t"'s spatial part is exactly MAE's 2-D table; "mae" is AudioMAE's; "3d" is unchanged."""

import numpy as np
import pytest
import torch

from mavil.model.positions import mae_sincos_2d, position_table, sincos_grid, spatial_temporal


def mae_table(dim: int, rows: int, cols: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed(_flexible) as its code computes it, in float32 numpy: the grid built width
    first, so the first dim/2 channels code the column and the last dim/2 the row; a zero [CLS] row first."""

    def code(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float32), omega.astype(np.float32))
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    col, row = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    table = np.concatenate([code(dim // 2, col), code(dim // 2, row)], axis=1)
    return np.concatenate([np.zeros([1, dim]), table], axis=0).astype(np.float32)


@pytest.mark.parametrize("dim,rows,cols", [(768, 14, 14), (768, 64, 8), (64, 4, 4)])
def test_mae_table(dim, rows, cols):
    torch.testing.assert_close(
        mae_sincos_2d(dim, (rows, cols)), torch.from_numpy(mae_table(dim, rows, cols)), atol=1e-5, rtol=0
    )  # MAE rounds its angles (up to 63 rad) to fp32: ~4e-6


def test_spatial_part_of_2d_plus_t_is_mae_table_and_time_is_added_on_top():
    dim, grid = 768, (4, 14, 14)
    table = spatial_temporal(dim, grid)  # (1 + 4 * 196, 768)
    mae = torch.from_numpy(mae_table(dim, 14, 14))
    assert table.shape == (1 + 4 * 196, dim)
    torch.testing.assert_close(table[: 1 + 196], mae, atol=2e-6, rtol=0)  # [CLS] and the first time slot: the image's
    per_slot = table[1:].reshape(4, 196, dim)
    temporal = per_slot - mae[1:]  # what time adds: one code per slot, the same at every spatial place
    torch.testing.assert_close(temporal, temporal[:, :1].expand(-1, 196, -1), atol=1e-5, rtol=0)
    assert temporal[0].abs().max() < 1e-5 and all(temporal[t].abs().max() > 0.1 for t in (1, 2, 3))
    assert len({tuple(row.round(decimals=4).tolist()) for row in table[1:]}) == 4 * 196  # every token distinct


def test_schemes_by_name():
    assert torch.equal(position_table("3d", 96, (4, 3, 3)), sincos_grid(96, (4, 3, 3)))  # today's table, unchanged
    assert torch.equal(position_table("2d", 64, (8, 4)), sincos_grid(64, (8, 4)))
    assert torch.equal(position_table("mae", 64, (8, 4)), mae_sincos_2d(64, (8, 4)))
    assert torch.equal(position_table("2d+t", 64, (2, 4, 4)), spatial_temporal(64, (2, 4, 4)))
    with pytest.raises(ValueError, match="2-D token grid"):
        position_table("2d+t", 64, (8, 4))
