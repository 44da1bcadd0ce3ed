"""Fine-tuning from an export of other input lengths: ESC-50 (512 frames) and Speech Commands (128) from a
1024-frame pre-training export. The weights load; the fixed positions are rebuilt for the new grid; pre-flight
compares only what makes weights incompatible (widths, depths, heads, patches, position schemes), except for a
stage-2 teacher, whose tokens must be the student's."""

from __future__ import annotations

import json

import pytest
import torch

from mavil.config import Checker, ConfigError
from mavil.engine.run import _check_weights
from mavil.model import MAViL, save_weights
from mavil.model.classifier import Classifier, load_encoders
from mavil.model.positions import position_table
from mavil.model.weights import architecture_differences, stored_architecture

from ..conftest import tiny_config
from .launcher import launch, metrics

EXPORT = ("model.audio_frames=1024", "model.audio_mel_bins=128")  # the AudioSet length, tiny widths


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = MAViL(tiny_config(*EXPORT).model)
    return model, save_weights(model, tmp_path_factory.mktemp("lengths") / "pre.safetensors")


@pytest.mark.parametrize("frames", [512, 128])  # ESC-50, SPC
def test_encoders_load_into_other_lengths_with_positions_for_the_new_grid(export, frames):
    pretrained, path = export
    cfg = tiny_config(
        f"model.audio_frames={frames}",
        "model.audio_mel_bins=128",
        "model.video_frames=8",
        "model.video_size=96",
        "finetune.mode=audio+video",
    )
    parts = ("audio_encoder", "video_encoder")
    assert architecture_differences(stored_architecture(path, parts), cfg.model, parts) == []
    model = Classifier(cfg.model, "audio+video", num_classes=5)
    assert load_encoders(model, str(path)) == ["audio_encoder", "video_encoder"]
    for name in parts:
        mine, theirs = getattr(model, name).state_dict(), getattr(pretrained.backbone, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    grid = (frames // 16, 128 // 16)
    assert model.audio_encoder.pos.shape == (1 + grid[0] * grid[1], 64)
    assert torch.equal(model.audio_encoder.pos, position_table("2d", 64, grid))
    assert model.video_encoder.pos.shape == (1 + 4 * 6 * 6, 64)
    logits = model.predict(torch.randn(2, 1, frames, 128), torch.randn(2, 3, 8, 96, 96))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_the_run_plan_compares_what_makes_weights_incompatible(export, tmp_path):
    _, path = export

    def check(*overrides, parts=("audio_encoder",), same_grid=False):
        cfg = tiny_config(*overrides)
        _check_weights(cfg, Checker(cfg.source, "finetune"), "init", str(path), parts, same_grid)

    check("model.audio_frames=128")  # another length: fine
    with pytest.raises(ConfigError, match=r"model.encoder_dim = 64 there, 96 here"):
        check("model.encoder_dim=96")
    with pytest.raises(ConfigError, match=r"model.audio_patch = \[16, 16\] there, \[16, 8\] here"):
        check("model.audio_patch=[16,8]")
    with pytest.raises(ConfigError, match=r'model.video_pos = "3d" there, "2d\+t" here'):
        check("model.video_pos=2d+t", parts=("video_encoder",))
    with pytest.raises(ConfigError, match=r"model.audio_frames = 1024 there, 384 here"):  # a teacher: same tokens
        check(parts=("audio_encoder", "video_encoder", "fusion"), same_grid=True)


def test_spc_finetunes_from_a_1024_frame_export_under_the_launcher(export, tmp_path):
    _, path = export
    run_dir = launch(
        tmp_path,
        "spc",
        f"finetune.init={path}",
        "model.audio_frames=128",
        "model.audio_mel_bins=128",
        "finetune.mode=audio",
        "train.max_steps=2",
        "finetune.eval_clips=1",
        "finetune.eval_synthetic_clips=8",
        "data.synthetic_clips=16",
        "data.synthetic_duration=4",
        "finetune.specaug_time=24",
        config="configs/tiny/finetune.json",
        procs=1,
    )
    log = (tmp_path / "spc.log").read_text()
    assert f"initialised audio_encoder from {path}" in log
    assert [line["step"] for line in metrics(run_dir)] == [1, 2]
    assert json.loads((run_dir / "eval.json").read_text())["clips"] == 8
