"""MAViL for pre-training (paper §3): stage 1 (Eq. 4) and stage 2 (Eq. 6).

    audio (B, 1, T, F), video (B, 3, T, H, W)
      -> patch tokens -> random masking (and a second, disjoint view for the intra-modal loss)
      -> uni-modal encoders f_a, f_v on the visible tokens          a_um, v_um
      -> fusion encoder g_av                                        a_mm, v_mm
      -> decoders with [MASK] tokens in the original order          predictions per token
    loss = masked MSE (raw patches in stage 1, the frozen teacher's fusion outputs in stage 2)
           + alpha * InfoNCE(a_emb, v_emb) + beta * (InfoNCE(a_emb, a_emb') + InfoNCE(v_emb, v_emb')) / 2

with a_emb the mean of a_um over its visible tokens ([CLS] excluded), as the paper pools.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels import masked_mse
from .contrastive import grouped_info_nce
from .encoder import ModalityDecoder, ModalityEncoder
from .fusion import BottleneckFusion, VanillaFusion
from .masking import Masking, random_masking
from .patch import patchify
from .vit import init_weights, set_grad_checkpointing

AUDIO_CHANNELS, VIDEO_CHANNELS = 1, 3


def _encoder_args(cfg: ModelConfig) -> dict:
    return dict(
        dim=cfg.encoder_dim,
        depth=cfg.encoder_depth,
        heads=cfg.encoder_heads,
        mlp_ratio=cfg.mlp_ratio,
        drop_path=cfg.drop_path,
        backend=cfg.attention,
        final_norm=cfg.encoder_norm,
    )


def audio_encoder(cfg: ModelConfig) -> ModalityEncoder:
    """f_a: a ViT over the (1, frames, mel bins) spectrogram's patches."""
    return ModalityEncoder(
        AUDIO_CHANNELS,
        (cfg.audio_frames, cfg.audio_mel_bins),
        tuple(cfg.audio_patch),
        **_encoder_args(cfg),
        pos_scheme=cfg.audio_pos,
    )


def video_encoder(cfg: ModelConfig) -> ModalityEncoder:
    """f_v: a ViT over the (3, frames, size, size) clip's tubelets."""
    return ModalityEncoder(
        VIDEO_CHANNELS,
        (cfg.video_frames, cfg.video_size, cfg.video_size),
        tuple(cfg.video_patch),
        **_encoder_args(cfg),
        pos_scheme=cfg.video_pos,
    )


class Backbone(nn.Module):
    """The encoders f_a, f_v and the fusion g_av: what the student, the teacher and fine-tuning share."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.audio_encoder, self.video_encoder = audio_encoder(cfg), video_encoder(cfg)
        fusion = (cfg.encoder_dim, cfg.fusion_depth, cfg.encoder_heads, cfg.mlp_ratio, cfg.drop_path, cfg.attention)
        self.fusion = (
            VanillaFusion(*fusion) if cfg.fusion == "vanilla" else BottleneckFusion(*fusion, cfg.bottleneck_tokens)
        )
        self.dim = cfg.encoder_dim
        self.apply(init_weights)

    def embed(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> audio (B, Na, dim) and video (B, Nv, dim) patch tokens."""
        return self.audio_encoder.embed(audio), self.video_encoder.embed(video)

    def encode(
        self,
        a_tokens: torch.Tensor,
        v_tokens: torch.Tensor,
        a_keep: torch.Tensor | None = None,
        v_keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> a_um (B, 1 + Ka, dim), v_um (B, 1 + Kv, dim); all tokens where the ids are None."""
        return self.audio_encoder.encode(a_tokens, a_keep), self.video_encoder.encode(v_tokens, v_keep)

    def contextual_features(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion outputs on the complete (unmasked) view, [CLS] dropped: (B, Na, dim), (B, Nv, dim)."""
        a_mm, v_mm = self.fusion(*self.encode(*self.embed(audio, video)))
        return a_mm[:, 1:], v_mm[:, 1:]


def pooled(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + K, dim) encoder output -> (B, dim): the mean over the K patch tokens, [CLS] excluded."""
    return tokens[:, 1:].mean(dim=1)


class MAViL(nn.Module):
    """Pre-training model. `forward(audio, video)` returns {"loss", "loss_recon_audio", "loss_recon_video",
    "loss_inter", "loss_intra"}: the weighted total and the unweighted parts (a part whose weight is 0 is
    neither computed nor returned).

    Stage 2 needs `teacher`, a frozen Backbone (see `weights.load_teacher`). It is kept outside this
    module's parameters and state_dict, so optimisers and checkpoints never see it. It follows the
    student: after every `_apply` (`.to()`, `.cuda()`, `.bfloat16()`, ...) its parameters take the device and
    dtype of the student's, its floating buffers those of the student's buffers. DeepSpeed's bf16 mode casts
    the parameters one by one (`p.data = p.data.to(bf16)`, not through `_apply`) and then moves the module to
    its device, which is when the teacher becomes bf16 too: no fp32 copy of it stays on the GPU.
    """

    def __init__(self, cfg: ModelConfig, teacher: Backbone | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        a_out, v_out = self._target_dims(teacher)
        dec = dict(
            dim=cfg.decoder_dim,
            depth=cfg.decoder_depth,
            heads=cfg.decoder_heads,
            mlp_ratio=cfg.mlp_ratio,
            backend=cfg.attention,
        )
        self.audio_decoder = ModalityDecoder(
            cfg.encoder_dim, self.backbone.audio_encoder.patch_embed.grid, out_dim=a_out, **dec
        )
        self.video_decoder = ModalityDecoder(
            cfg.encoder_dim, self.backbone.video_encoder.patch_embed.grid, out_dim=v_out, **dec
        )
        self.audio_decoder.apply(init_weights)
        self.video_decoder.apply(init_weights)
        set_grad_checkpointing(self, cfg.grad_checkpointing)  # every block: encoders, fusion, decoders
        if teacher is not None:
            self._check_teacher(teacher)
            teacher.requires_grad_(False).eval()
        self.__dict__["teacher"] = teacher  # not a submodule: no parameters, no state_dict entries
        self.micro_batch: int | None = None  # clips per rank (train.micro_batch, set by the engine) for the groups
        self._teacher_follows_student()

    def _target_dims(self, teacher: Backbone | None) -> tuple[int, int]:
        cfg = self.cfg
        if cfg.stage == 1:
            return math.prod(cfg.audio_patch) * AUDIO_CHANNELS, math.prod(cfg.video_patch) * VIDEO_CHANNELS
        dim = teacher.dim if teacher is not None else cfg.encoder_dim
        return dim, dim

    def _check_teacher(self, teacher: Backbone) -> None:
        if self.cfg.stage != 2:
            raise ValueError(f"a teacher is used only in stage 2; this model is stage {self.cfg.stage}")
        for name in ("audio_encoder", "video_encoder"):
            mine, theirs = getattr(self.backbone, name).patch_embed, getattr(teacher, name).patch_embed
            if (mine.input_shape, mine.grid) != (theirs.input_shape, theirs.grid):
                raise ValueError(
                    f"teacher {name}: input {theirs.input_shape} in a {theirs.grid} token grid, but the "
                    f"student has input {mine.input_shape} in a {mine.grid} grid; targets need the same tokens"
                )

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._teacher_follows_student()
        return self

    def _teacher_follows_student(self) -> None:
        """The teacher's parameters to the device and dtype of the student's backbone parameters, its floating
        buffers (positions) to those of the backbone's buffers; the same Parameter objects, still frozen."""
        if self.teacher is None:
            return
        param = next(self.backbone.parameters())
        buffer = next(self.backbone.buffers(), param)

        def follow(t: torch.Tensor) -> torch.Tensor:
            like = param if isinstance(t, nn.Parameter) else buffer
            return t.to(like.device, like.dtype) if t.is_floating_point() else t.to(like.device)

        with torch.no_grad():
            self.teacher._apply(follow)

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """audio (B, 1, T, F) spectrograms, video (B, 3, T, H, W) clips -> losses (0-dim fp32 tensors)."""
        a_tokens, v_tokens = self.backbone.embed(audio, video)
        a_mask, v_mask = self._draw_masks(a_tokens, v_tokens)
        a_um, v_um = self.backbone.encode(a_tokens, v_tokens, a_mask.ids_keep, v_mask.ids_keep)
        parts = {
            **self._reconstruction(audio, video, a_um, v_um, a_mask, v_mask),
            **self._contrastive(a_tokens, v_tokens, a_um, v_um, a_mask, v_mask),
        }  # a new dict: no mutation traced
        weights = {"loss_inter": self.cfg.alpha, "loss_intra": self.cfg.beta}
        loss = sum(weights.get(name, 1.0) * value for name, value in parts.items())
        return {"loss": loss, **parts}

    def _draw_masks(
        self,
        a_tokens: torch.Tensor,
        v_tokens: torch.Tensor,
        ratio: float | None = None,
        second_view: bool | None = None,
    ) -> tuple[Masking, Masking]:
        batch = a_tokens.shape[0]
        ratio = self.cfg.mask_ratio if ratio is None else ratio
        second = self.cfg.beta > 0 if second_view is None else second_view
        return (
            random_masking(batch, a_tokens.shape[1], ratio, a_tokens.device, second_view=second),
            random_masking(batch, v_tokens.shape[1], ratio, v_tokens.device, second_view=second),
        )

    def _predict(self, a_um, v_um, a_mask: Masking, v_mask: Masking) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion, then each decoder: (B, Na, target dim), (B, Nv, target dim) predictions for every token."""
        a_mm, v_mm = self.backbone.fusion(a_um, v_um)
        return self.audio_decoder(a_mm, a_mask.ids_restore), self.video_decoder(v_mm, v_mask.ids_restore)

    def _reconstruction(self, audio, video, a_um, v_um, a_mask: Masking, v_mask: Masking) -> dict[str, torch.Tensor]:
        """Eq. 1 (stage 1) or Eq. 5 (stage 2): masked MSE of each decoder's predictions against its targets."""
        a_pred, v_pred = self._predict(a_um, v_um, a_mask, v_mask)
        a_target, v_target = self.targets(audio, video)
        norm = self.cfg.norm_pix_loss
        return {
            "loss_recon_audio": masked_mse(a_pred, a_target, a_mask.mask, norm),
            "loss_recon_video": masked_mse(v_pred, v_target, v_mask.mask, norm),
        }

    @torch.no_grad()
    def reconstruct(
        self, audio: torch.Tensor, video: torch.Tensor, mask_ratio: float | None = None
    ) -> dict[str, torch.Tensor]:
        """One masked pass without losses, for pictures: per modality the decoder's prediction of every token
        (B, N, target dim), the mask (B, N) with 1 on hidden tokens, and the target (B, N, target dim), all in
        token order. `mask_ratio` overrides the config's (the paper's figures use 0.7)."""
        a_tokens, v_tokens = self.backbone.embed(audio, video)
        a_mask, v_mask = self._draw_masks(a_tokens, v_tokens, mask_ratio, second_view=False)
        a_um, v_um = self.backbone.encode(a_tokens, v_tokens, a_mask.ids_keep, v_mask.ids_keep)
        a_pred, v_pred = self._predict(a_um, v_um, a_mask, v_mask)
        a_target, v_target = self.targets(audio, video)
        return {
            "audio_pred": a_pred,
            "audio_mask": a_mask.mask,
            "audio_target": a_target,
            "video_pred": v_pred,
            "video_mask": v_mask.mask,
            "video_target": v_target,
        }

    def targets(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token targets: raw patches (stage 1) or the teacher's fused features on the full view (stage 2)."""
        if self.cfg.stage == 1:
            return patchify(audio, tuple(self.cfg.audio_patch)), patchify(video, tuple(self.cfg.video_patch))
        if self.teacher is None:
            raise RuntimeError(
                "stage 2 needs a teacher: build the model with mavil.model.build_model "
                "(model.teacher names a stage-1 weights file) or pass teacher="
            )
        with torch.no_grad():
            return self.teacher.contextual_features(audio, video)

    def _contrastive(self, a_tokens, v_tokens, a_um, v_um, a_mask: Masking, v_mask: Masking) -> dict[str, torch.Tensor]:
        """Eq. 3: inter-modal InfoNCE between the views' pooled embeddings, intra-modal against a second view."""
        cfg, parts = self.cfg, {}
        contrast = partial(
            grouped_info_nce,
            group=cfg.contrastive_group,
            global_negatives=cfg.global_negatives,
            micro_batch=self.micro_batch,
        )  # groups of clips (contrastive.py), not the cluster's shape
        a_emb, v_emb = pooled(a_um), pooled(v_um)
        if cfg.alpha > 0:
            parts["loss_inter"] = contrast(a_emb, v_emb, cfg.tau_inter, cfg.contrastive_symmetric)
        if cfg.beta > 0:
            a_um2, v_um2 = self.backbone.encode(a_tokens, v_tokens, a_mask.ids_keep_second, v_mask.ids_keep_second)
            parts["loss_intra"] = 0.5 * (
                contrast(a_emb, pooled(a_um2), cfg.tau_intra, cfg.contrastive_symmetric)
                + contrast(v_emb, pooled(v_um2), cfg.tau_intra, cfg.contrastive_symmetric)
            )
        return parts
