"""The classifier owns its fine-tuning masking and loss: forward(audio, video, label) -> {"loss"}, the reference
computation (the masks drawn by hand, audio first, from the same seeded generator state, then BCE, CE or InfoNCE)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mavil.kernels import info_nce
from mavil.model.classifier import Classifier
from mavil.model.masking import random_masking, time_frequency_keep

from ..conftest import tiny_config

MASKING = {"mask_time": 0.2, "mask_freq": 0.25, "mask_video": 0.3}


def batch(cfg, size=3, classes=4):
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(size, 1, cfg.audio_frames, cfg.audio_mel_bins, generator=gen)
    video = torch.randn(size, 3, cfg.video_frames, cfg.video_size, cfg.video_size, generator=gen)
    label = torch.rand(size, classes, generator=gen).softmax(dim=1)  # soft targets, as mixup gives
    return audio, video, label


def reference_keep(cfg, mode, size):
    """The masks by hand: audio's rows and columns first, then video's tokens."""
    grid = (cfg.audio_frames // cfg.audio_patch[0], cfg.audio_mel_bins // cfg.audio_patch[1])
    audio_keep = time_frequency_keep(size, grid, 0.2, 0.25, "cpu") if mode != "video" else None
    video_keep = random_masking(size, cfg.video_tokens, 0.3, "cpu").ids_keep if mode != "audio" else None
    return audio_keep, video_keep


@pytest.mark.parametrize("mode, loss", [("audio", "bce"), ("video", "ce"), ("audio+video", "bce")])
def test_training_forward_gives_the_reference_loss(mode, loss):
    cfg = tiny_config().model
    torch.manual_seed(0)
    model = Classifier(cfg, mode, 4, fusion_depth=1, loss=loss, **MASKING).train()
    audio, video, label = batch(cfg)
    torch.manual_seed(1)
    out = model(audio, video, label)
    torch.manual_seed(1)
    logits = model.outputs(audio, video, *reference_keep(cfg, mode, 3)).float()
    if loss == "bce":
        expected = F.binary_cross_entropy_with_logits(logits, label)
    else:
        expected = F.cross_entropy(logits, label.argmax(dim=1))
    assert out.keys() == {"loss"} and torch.equal(out["loss"], expected)


def test_retrieval_forward_gives_the_reference_infonce_without_labels():
    cfg = tiny_config().model
    torch.manual_seed(0)
    model = Classifier(cfg, "retrieval", 0, tau=0.07, **MASKING).train()
    audio, video, _ = batch(cfg)
    torch.manual_seed(1)
    out = model(audio, video)
    torch.manual_seed(1)
    a_emb, v_emb = model.outputs(audio, video, *reference_keep(cfg, "retrieval", 3))
    assert torch.equal(out["loss"], info_nce(a_emb, v_emb, 0.07, symmetric=True))


def test_evaluation_mode_and_predict_are_unmasked():
    cfg = tiny_config().model
    model = Classifier(cfg, "audio+video", 4, fusion_depth=1, **MASKING).eval()
    audio, video, label = batch(cfg)
    logits = model.predict(audio, video)
    assert logits.shape == (3, 4)
    assert torch.equal(model(audio, video, label)["loss"], F.binary_cross_entropy_with_logits(logits.float(), label))
    with pytest.raises(ValueError, match="needs the labels"):
        model(audio, video)
