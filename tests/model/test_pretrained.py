"""model.video_init / audio_init: MAE-layout checkpoints load into our encoders, which then compute what the
reference ViT (timm's, whose state dict has MAE's key names) computes.

The reference is timm's VisionTransformer with its pos_embed set to MAE's fixed 2-D table (MAE's checkpoints store
that table; timm's own is learned), saved as MAE saves: torch.save({'model': state_dict}). Compared:

- video, model.video_pos = "2d+t", video_frames = 2 = the tubelet's length: one time slot, whose time code is zero,
  so every token's position is the image's; a static clip (the frame repeated twice) embeds through the inflated
  projection (kernel repeated over time / 2) as the frame through the 2-D one. Same tokens in the same order
  ([CLS], then row-major patches), same blocks, same final norm: the outputs agree to fp32 tolerance. ViT-B, the
  real key set (timm's vit_base_patch16_224 without head, plus MAE's decoder keys, which are skipped).
- video with 4 time slots (8 frames): every slot of a static clip embeds as the frame, and the first slot's
  positions are the image's. The encoders' outputs are not compared there: the other slots add their time code,
  and even without it the one [CLS] key would weigh less against patch keys repeated 4 times than against the
  image's, so no exact equality exists for more than one slot.
- audio, model.audio_pos = "mae", 1-channel 16 x 16 patches over 1024 x 128 (AudioMAE's layout, time-major tokens).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mavil.config import ModelConfig
from mavil.model.mavil import audio_encoder, video_encoder
from mavil.model.positions import mae_sincos_2d
from mavil.model.pretrained import check_init, load_init, load_inits
from mavil.model.weights import build_model

timm = pytest.importorskip("timm", reason="timm is a test-only dependency: pip install -e .[dev]")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)


def reference_vit(img_size, in_chans: int, dim: int, depth: int, heads: int, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=16,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        weight_init="skip",
    ).eval()
    grid = vit.patch_embed.grid_size
    with torch.no_grad():
        for name, p in vit.named_parameters():  # random everywhere (LayerNorms at 1/0 would test less)
            p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.02)
        vit.pos_embed.copy_(mae_sincos_2d(dim, grid)[None])  # MAE's fixed table, as its checkpoints store it
    return vit


def save_as_mae(vit: VisionTransformer, path, decoder_dim: int = 16) -> None:
    """The encoder's state dict plus a few of MAE's decoder tensors (the visualisation checkpoints hold them)."""
    state = dict(vit.state_dict())
    state.update(
        {
            "mask_token": torch.zeros(1, 1, decoder_dim),
            "decoder_embed.weight": torch.zeros(decoder_dim, 4),
            "decoder_pos_embed": torch.zeros(1, 5, decoder_dim),
            "decoder_pred.weight": torch.zeros(8, 4),
        }
    )
    torch.save({"model": state}, path)


def config(**kw) -> ModelConfig:
    return dataclasses.replace(ModelConfig(), attention="math", **kw)


def test_video_vit_b_from_mae_checkpoint_matches_timm_on_the_frame(tmp_path):
    vit = reference_vit(224, 3, 768, 12, 12)
    assert not any(k.startswith(("head.", "fc_norm.")) for k in vit.state_dict())  # MAE's encoder key set
    path = tmp_path / "mae_pretrain_vit_base.pth"
    save_as_mae(vit, path)
    cfg = config(video_frames=2, video_pos="2d+t", video_init=str(path))
    assert check_init(cfg, "video_init", path).missing == []  # pre-flight's look, shapes only
    encoder = video_encoder(cfg).eval()
    (report,) = load_inits(torch.nn.ModuleDict({"video_encoder": encoder}), cfg)  # what build_model does
    assert report.missing == [] and len(report.loaded) == 1 + 2 + 12 * 12 + 2
    assert sorted(report.skipped) == [
        "decoder_embed.weight",
        "decoder_pos_embed",
        "decoder_pred.weight",
        "mask_token",
        "pos_embed",
    ]
    assert "matches this model's positions" in str(report)
    frame = torch.randn(1, 3, 224, 224)
    clip = frame[:, :, None].expand(-1, -1, 2, -1, -1)  # static: the frame twice
    with torch.no_grad():
        ours = encoder.encode(encoder.embed(clip))
        theirs = vit.forward_features(frame)  # (B, 197, 768): [CLS] + 196 patches, final norm applied
    torch.testing.assert_close(ours, theirs, **TOL)


def test_video_time_slots_of_a_static_clip_each_embed_as_the_frame(tmp_path):
    vit = reference_vit(64, 3, 64, 2, 4, seed=1)
    path = tmp_path / "mae.pth"
    save_as_mae(vit, path)
    cfg = config(video_frames=8, video_size=64, video_pos="2d+t", encoder_dim=64, encoder_depth=2, encoder_heads=4)
    encoder = video_encoder(cfg).eval()
    report = load_init(encoder, path, "video_init")
    assert "inflated to (64, 3, 2, 16, 16)" in str(report)
    frame = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder.embed(frame[:, :, None].expand(-1, -1, 8, -1, -1))  # (2, 4 * 16, 64), time-major
        theirs = vit.patch_embed(frame)  # (2, 16, 64)
    for t in range(4):  # every time slot of a static clip embeds as the frame does
        torch.testing.assert_close(tokens[:, 16 * t : 16 * (t + 1)], theirs, **TOL)
    # the first slot's positions are the image's, the others' differ by their time code alone
    torch.testing.assert_close(encoder.pos[:17], vit.pos_embed[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(encoder.cls_token, vit.cls_token)


def test_audio_from_audiomae_layout_matches_timm(tmp_path):
    vit = reference_vit((1024, 128), 1, 64, 2, 4, seed=2)
    path = tmp_path / "audiomae.pth"
    torch.save({"model": dict(vit.state_dict()), "epoch": 3}, path)
    cfg = config(audio_pos="mae", audio_init=str(path), encoder_dim=64, encoder_depth=2, encoder_heads=4)
    encoder = audio_encoder(cfg).eval()
    (report,) = load_inits(torch.nn.ModuleDict({"audio_encoder": encoder}), cfg)
    assert report.missing == [] and report.skipped == ["pos_embed"]
    assert "matches this model's positions" in str(report)
    spectrogram = torch.randn(2, 1, 1024, 128)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(encoder.embed(spectrogram)), vit.forward_features(spectrogram), **TOL)
    # today's "2d" table (time channels first) is not AudioMAE's: the report says so
    other = load_init(audio_encoder(dataclasses.replace(cfg, audio_pos="2d")), path, "audio_init")
    assert "differs from this model's positions (model.audio_pos)" in str(other)


def test_refusals_name_key_and_shapes(tmp_path):
    vit = reference_vit(64, 3, 64, 2, 4)
    path = tmp_path / "mae.pth"
    save_as_mae(vit, path)
    small = dict(video_size=64, video_pos="2d+t", encoder_dim=64, encoder_heads=4)
    with pytest.raises(
        ValueError,
        match=r"patch_embed.proj.weight \(64, 3, 16, 16\) does not fit "
        r"video_encoder.patch_embed.proj.weight \(64, 3, 2, 8, 8\)",
    ):
        check_init(config(**small, encoder_depth=2, video_patch=[2, 8, 8]), "video_init", path)
    with pytest.raises(ValueError, match="holds 2 blocks, this model's video_encoder has 3"):
        check_init(config(**small, encoder_depth=3), "video_init", path)
    with pytest.raises(ValueError, match=r"cls_token \(1, 1, 64\) does not fit audio_encoder.cls_token \(1, 1, 32\)"):
        check_init(config(encoder_dim=32, encoder_heads=4, encoder_depth=2), "audio_init", path)
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="holds no blocks"):
        check_init(config(**small, encoder_depth=2), "video_init", tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only=True"):
        check_init(config(**small, encoder_depth=2), "video_init", tmp_path / "junk.pth")


def test_the_run_plan_refuses_a_missing_or_unfitting_init_with_one_line(tmp_path):
    import subprocess
    import sys

    from mavil.config import ConfigError
    from mavil.engine.run import plan_pretraining

    from ..conftest import CONFIGS, REPO, tiny_config

    # the paper's config names MAE's checkpoint, which the user supplies: without it, exit 2 and where it comes from
    run = subprocess.run(
        [
            sys.executable,
            "engine/pretrain.py",
            "--config",
            str(CONFIGS / "stage1.json"),
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    for words in (
        "model.video_init",
        "no such file",
        "mae_pretrain_vit_base.pth",
        "facebookresearch/mae",
        "model.video_init=null",
    ):
        assert words in run.stderr
    vit = reference_vit(64, 3, 32, 2, 4)  # width 32: the tiny config's encoders are 64 wide
    save_as_mae(vit, tmp_path / "narrow.pth")
    with pytest.raises(
        ConfigError,
        match=r"model.video_init = .*narrow.pth.*: cls_token \(1, 1, 32\) does not fit "
        r"video_encoder.cls_token \(1, 1, 64\)",
    ):
        plan_pretraining(tiny_config(f"model.video_init={tmp_path / 'narrow.pth'}"), 1)


def test_build_model_initialises_the_video_encoder_from_model_video_init(tmp_path):
    from ..conftest import tiny_config

    vit = reference_vit(64, 3, 64, 2, 4)
    save_as_mae(vit, tmp_path / "mae.pth")
    cfg = tiny_config(f"model.video_init={tmp_path / 'mae.pth'}", "model.video_pos=2d+t").model
    model = build_model(cfg)
    (report,) = model.init_reports
    assert report.encoder == "video_encoder" and report.missing == []
    block = model.backbone.video_encoder.transformer.blocks[1].mlp.fc2.weight
    torch.testing.assert_close(block, vit.blocks[1].mlp.fc2.weight, rtol=0, atol=0)
    assert build_model(tiny_config().model).init_reports == []


def test_fine_tuning_classifier_takes_the_init_and_a_norm_free_encoder_skips_mae_norm(tmp_path):
    from mavil.model.classifier import Classifier

    vit = reference_vit(64, 3, 64, 2, 4)
    path = tmp_path / "mae.pth"
    save_as_mae(vit, path)
    cfg = config(
        video_frames=4,
        video_size=64,
        video_pos="2d+t",
        encoder_dim=64,
        encoder_depth=2,
        encoder_heads=4,
        video_init=str(path),
        audio_init=str(path),
    )
    (report,) = load_inits(Classifier(cfg, "video", 3), cfg)  # a video classifier has no audio encoder to load
    assert report.encoder == "video_encoder" and "transformer.norm.weight" in report.loaded
    norm_free = dataclasses.replace(cfg, encoder_norm=False)
    (report,) = load_inits(Classifier(norm_free, "video", 3), norm_free)
    assert {"norm.weight", "norm.bias"} <= set(report.skipped) and report.missing == []
