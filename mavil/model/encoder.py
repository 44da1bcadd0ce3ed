"""One modality's encoder f(.) and decoder f^-1(.) (paper §3.1, App. B).

Encoder: patch embedding, fixed sin-cos positions, a [CLS] token, ViT blocks, final LayerNorm (none with
final_norm=False: the layout of the authors' ViT-MM code, model.encoder_norm).
Only the visible tokens are encoded; `embed` and `encode` are separate so that the two masked
views of the intra-modal loss share one patch embedding.

Decoder: a linear projection to the decoder width, [MASK] tokens restored to the original token
order with the decoder's own sin-cos positions, ViT blocks, and a linear head predicting each
token's target (raw patch values in stage 1, the teacher's fused features in stage 2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import masked_gather, masked_restore
from .patch import PatchEmbed
from .positions import position_table, sincos_grid
from .vit import Transformer


class ModalityEncoder(nn.Module):
    def __init__(
        self,
        in_chans: int,
        input_size: tuple[int, ...],
        patch: tuple[int, ...],
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_path: float,
        backend: str,
        final_norm: bool = True,
        pos_scheme: str = "3d",
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, input_size, patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed positions for the grid of this input size (a new size rebuilds them): positions.position_table
        self.register_buffer("pos", position_table(pos_scheme, dim, self.patch_embed.grid), persistent=False)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, drop_path, backend, final_norm)
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *size) -> (B, N, dim) patch tokens without positions."""
        return self.patch_embed(x)

    def encode(self, tokens: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) tokens, (B, K) visible ids or None for all -> (B, 1 + K, dim), [CLS] first."""
        return self.transformer(self.block_input(tokens, ids_keep))

    def block_input(self, tokens: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """The first block's input: [CLS] and the visible tokens with their positions, (B, 1 + K, dim)."""
        if ids_keep is None:
            visible = tokens + self.pos[1:].to(tokens.dtype)
        else:
            visible = masked_gather(tokens, ids_keep, self.pos[1:])
        cls = (self.cls_token + self.pos[:1].to(tokens.dtype)).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, visible], dim=1)

    def hidden_states(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Every block's input and the last block's output, final norm applied to that last one (none without it):
        depth + 1 tensors (B, 1 + N, dim), all tokens visible. The last equals `encode(tokens)`."""
        x = self.block_input(tokens)
        states = [x]
        for block in self.transformer.blocks:
            x = block(x)
            states.append(x)
        states[-1] = self.transformer.norm(x)
        return states


class ModalityDecoder(nn.Module):
    def __init__(
        self,
        in_dim: int,
        grid: tuple[int, ...],
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        out_dim: int,
        backend: str,
    ):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("pos", sincos_grid(dim, grid), persistent=False)  # (1 + N, dim)
        self.transformer = Transformer(dim, depth, heads, mlp_ratio, 0.0, backend)
        self.head = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, fused: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, in_dim) fused tokens, [CLS] first; (B, N) ids_restore -> (B, N, out_dim) predictions."""
        x = self.embed(fused)
        cls = x[:, :1] + self.pos[:1].to(x.dtype)
        patches = masked_restore(x[:, 1:], ids_restore, self.mask_token, self.pos[1:])  # (B, N, dim)
        x = self.transformer(torch.cat([cls, patches], dim=1))
        return self.head(x[:, 1:])
