"""The audio-video fusion encoder g_av (paper §3.1): L blocks over both modalities' encoder outputs.

- vanilla: joint attention over the concatenated tokens, (a || v) -> Transformer -> (a' || v').
- mbt: the modalities meet only through B bottleneck tokens. Each layer runs on (a || b) and on
  (v || b), the same weights g_av^l for both as the paper writes it, then b = (b_a + b_v) / 2.

Both end with a LayerNorm per modality and return tokens of the input shapes ([CLS] kept first).
With depth 0 they reduce to those norms (the paper's "None" baseline of Table 2).
"""

from __future__ import annotations

import torch
from torch import nn

from .vit import LayerNorm, make_blocks


class Fusion(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float, backend: str):
        super().__init__()
        self.blocks = make_blocks(depth, dim, heads, mlp_ratio, drop_path, backend)
        self.norm_audio, self.norm_video = LayerNorm(dim), LayerNorm(dim)

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, La, dim), (B, Lv, dim) -> the same shapes, fused."""
        audio, video = self.mix(audio, video)
        return self.norm_audio(audio), self.norm_video(video)

    def mix(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class VanillaFusion(Fusion):
    def mix(self, audio, video):
        x = self.hidden_states(audio, video)[-1]
        return x.split([audio.shape[1], video.shape[1]], dim=1)

    def hidden_states(self, audio: torch.Tensor, video: torch.Tensor) -> list[torch.Tensor]:
        """The joint sequence (a || v), (B, La + Lv, dim), at every block's input and after the last block,
        before the per-modality norms: depth + 1 tensors (the fusion states AV-SUPERB's MAViL expert returns)."""
        states = [torch.cat([audio, video], dim=1)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states


class BottleneckFusion(Fusion):
    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float, backend: str, bottleneck_tokens: int
    ):
        super().__init__(dim, depth, heads, mlp_ratio, drop_path, backend)
        self.bottleneck = nn.Parameter(torch.zeros(1, bottleneck_tokens, dim))
        nn.init.normal_(self.bottleneck, std=0.02)

    def mix(self, audio, video):
        shared = self.bottleneck.expand(audio.shape[0], -1, -1)  # (B, nb, dim)
        for block in self.blocks:
            audio, shared_a = self._attend_with(block, audio, shared)
            video, shared_v = self._attend_with(block, video, shared)
            shared = (shared_a + shared_v) / 2
        return audio, video

    @staticmethod
    def _attend_with(block: nn.Module, tokens: torch.Tensor, shared: torch.Tensor):
        out = block(torch.cat([tokens, shared], dim=1))
        return out.split([tokens.shape[1], shared.shape[1]], dim=1)
