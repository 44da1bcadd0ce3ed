"""The fine-tuning network (§4.3, App. B): the pre-trained encoders only, average-pooled tokens, a linear head.

- audio / video: one encoder, the mean of its patch tokens ([CLS] excluded), LayerNorm, linear head.
- audio+video: both encoders, then a `fusion_depth`-layer vanilla Transformer over their concatenated patch tokens,
  the mean over all of them, LayerNorm, head. With model.encoder_norm=False (the authors' ViT-MM layout,
  AV-SUPERB's expert) each modality's fused tokens are averaged on their own and concatenated (2 * dim).
- retrieval: both encoders and no head; `embeddings` gives each modality's pooled tokens, trained with InfoNCE.

`forward(audio, video, label)` -> {"loss": ...}, masking tokens before the encoders in training mode (audio: whole
time rows and frequency columns of patches; video: random tokens); `predict` gives the unmasked outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..kernels import info_nce, info_nce_global
from .masking import random_masking, time_frequency_keep
from .mavil import audio_encoder, video_encoder
from .vit import LayerNorm, Transformer, init_weights, set_grad_checkpointing
from .weights import read_weights

ENCODER_PREFIX = "backbone."


def encoder_names(mode: str) -> tuple[str, ...]:
    """The encoders a fine-tuning mode keeps: audio_encoder unless "video", video_encoder unless "audio"."""
    return tuple(
        name for name, other_mode in (("audio_encoder", "video"), ("video_encoder", "audio")) if mode != other_mode
    )


class Classifier(nn.Module):
    """forward(audio, video, label) -> {"loss": scalar}: in training mode the fine-tuning masking first (audio's
    draws, then video's, from the default generator of the inputs' device), then BCE on `label` (B, classes) (soft
    targets with mixup) or CE on its argmax; in retrieval symmetric InfoNCE at `tau` (every rank's negatives with
    cfg.global_negatives), label unused. predict(audio, video): the outputs, unmasked. Masking fractions of 0: none.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        mode: str,
        num_classes: int,
        fusion_depth: int = 3,
        *,
        mask_time: float = 0.0,
        mask_freq: float = 0.0,
        mask_video: float = 0.0,
        loss: str = "bce",
        tau: float = 0.1,
    ):
        super().__init__()
        self.cfg, self.mode = cfg, mode
        self.mask_time, self.mask_freq, self.mask_video = mask_time, mask_freq, mask_video
        self.loss, self.tau = loss, tau
        encoders = encoder_names(mode)
        if "audio_encoder" in encoders:
            self.audio_encoder = audio_encoder(cfg)
        if "video_encoder" in encoders:
            self.video_encoder = video_encoder(cfg)
        self.vitmm = mode == "audio+video" and not cfg.encoder_norm  # pooled per modality, 2 * dim
        if mode == "audio+video":
            self.fusion = Transformer(
                cfg.encoder_dim,
                fusion_depth,
                cfg.encoder_heads,
                cfg.mlp_ratio,
                cfg.drop_path,
                cfg.attention,
                final_norm=cfg.encoder_norm,
            )
        pooled_dim = cfg.encoder_dim * (2 if self.vitmm else 1)
        self.fc_norm = LayerNorm(pooled_dim)
        self.head = nn.Linear(pooled_dim, num_classes) if mode != "retrieval" else None
        self.apply(init_weights)
        if self.head is not None:
            nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head
        set_grad_checkpointing(self, cfg.grad_checkpointing)

    def encode(self, encoder: nn.Module, x: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """(B, C, *size) -> (B, K, dim) patch tokens ([CLS] dropped)."""
        return encoder.encode(encoder.embed(x), ids_keep)[:, 1:]

    def forward(
        self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None, label: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch tensors -> {"loss": scalar} (see the class docstring); masked in training mode."""
        audio_keep, video_keep = self.keep_ids(audio, video) if self.training else (None, None)
        if self.mode == "retrieval":
            a_emb, v_emb = self.outputs(audio, video, audio_keep, video_keep)
            contrast = info_nce_global if self.cfg.global_negatives else info_nce
            return {"loss": contrast(a_emb, v_emb, self.tau, symmetric=True)}
        if label is None:
            raise ValueError(f"a {self.mode} classifier's loss needs the labels")
        logits = self.outputs(audio, video, audio_keep, video_keep).float()
        if self.loss == "bce":
            return {"loss": F.binary_cross_entropy_with_logits(logits, label)}
        return {"loss": F.cross_entropy(logits, label.argmax(dim=1))}

    def predict(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None):
        """Unmasked -> (B, classes) logits from the modalities of the mode; in retrieval mode the two embeddings."""
        return self.outputs(audio, video)

    def keep_ids(
        self, audio: torch.Tensor | None, video: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Fine-tuning masking: the tokens each encoder keeps (None: all), audio's drawn first."""
        m = self.cfg
        audio_keep = video_keep = None
        if self.mode != "video" and (self.mask_time or self.mask_freq):
            grid = (m.audio_frames // m.audio_patch[0], m.audio_mel_bins // m.audio_patch[1])
            audio_keep = time_frequency_keep(audio.shape[0], grid, self.mask_time, self.mask_freq, audio.device)
        if self.mode != "audio" and self.mask_video:
            video_keep = random_masking(video.shape[0], m.video_tokens, self.mask_video, video.device).ids_keep
        return audio_keep, video_keep

    def outputs(
        self,
        audio: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        audio_keep: torch.Tensor | None = None,
        video_keep: torch.Tensor | None = None,
    ):
        """`predict` with the tokens each encoder keeps (None: all)."""
        if self.mode == "retrieval":
            return self.embeddings(audio, video, audio_keep, video_keep)
        if self.vitmm:
            return self.head(self.fc_norm(self.fused_pooled(audio, video, audio_keep, video_keep)))
        tokens = []
        if self.mode != "video":
            tokens.append(self.encode(self.audio_encoder, audio, audio_keep))
        if self.mode != "audio":
            tokens.append(self.encode(self.video_encoder, video, video_keep))
        x = torch.cat(tokens, dim=1)
        if self.mode == "audio+video":
            x = self.fusion(x)
        return self.head(self.fc_norm(x.mean(dim=1)))

    def fused_pooled(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        audio_keep: torch.Tensor | None = None,
        video_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ViT-MM layout: (B, 2 * dim), the fused audio patch tokens' mean || the fused video patch tokens' mean."""
        a = self.audio_encoder.encode(self.audio_encoder.embed(audio), audio_keep)  # (B, 1 + Ka, dim), [CLS] first
        v = self.video_encoder.encode(self.video_encoder.embed(video), video_keep)
        x = self.fusion(torch.cat([a, v], dim=1))
        length = a.shape[1]
        return torch.cat([x[:, 1:length].mean(dim=1), x[:, length + 1 :].mean(dim=1)], dim=-1)

    def embeddings(self, audio: torch.Tensor, video: torch.Tensor, audio_keep=None, video_keep=None):
        """Retrieval: (B, dim) audio and video embeddings, each the mean of its encoder's patch tokens."""
        return (
            self.encode(self.audio_encoder, audio, audio_keep).mean(dim=1),
            self.encode(self.video_encoder, video, video_keep).mean(dim=1),
        )


def load_encoders(model: Classifier, path: str) -> list[str]:
    """Copies a pre-training export's encoders into `model` (all of their tensors, or an error naming what
    does not fit). A model without the encoders' final LayerNorm (model.encoder_norm=False) leaves the export's
    out, as MAE's fine-tuning with average pooling does. -> the names of the encoders loaded."""
    state, _ = read_weights(path)
    loaded = []
    for name in ("audio_encoder", "video_encoder"):
        if not hasattr(model, name):
            continue
        prefix = f"{ENCODER_PREFIX}{name}."
        encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not model.cfg.encoder_norm:
            encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("transformer.norm.")}
        try:
            getattr(model, name).load_state_dict(encoder_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: its {name} does not fit the fine-tuning model: {err}") from None
        loaded.append(name)
    return loaded
