"""Fine-tuning: the classifier, its masking and augmentations, and engine/finetune.py under the launcher."""

from __future__ import annotations

import json

import pytest
import torch

from mavil.engine.augment import add_noise, mixup, spec_augment
from mavil.engine.optim import param_groups
from mavil.model import MAViL, save_weights
from mavil.model.classifier import Classifier, load_encoders
from mavil.model.masking import time_frequency_keep

from ..conftest import tiny_config
from .launcher import launch, metrics


def inputs(cfg, batch=2):
    m = cfg.model
    return torch.randn(batch, 1, m.audio_frames, m.audio_mel_bins), torch.randn(
        batch, 3, m.video_frames, m.video_size, m.video_size
    )


@pytest.mark.parametrize("mode", ["audio", "video", "audio+video"])
def test_classifier_modes_give_logits(mode):
    cfg = tiny_config()
    model = Classifier(cfg.model, mode, num_classes=5)
    assert model.predict(*inputs(cfg)).shape == (2, 5)
    assert hasattr(model, "fusion") == (mode == "audio+video")
    assert hasattr(model, "audio_encoder") == (mode != "video") and hasattr(model, "video_encoder") == (mode != "audio")


def test_retrieval_mode_gives_two_embeddings():
    cfg = tiny_config()
    a_emb, v_emb = Classifier(cfg.model, "retrieval", 0).predict(*inputs(cfg, 3))
    assert a_emb.shape == v_emb.shape == (3, 64)


def test_encoders_load_from_a_pretraining_export(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    pretrained = MAViL(cfg.model)
    path = save_weights(pretrained, tmp_path / "pre.safetensors")
    model = Classifier(cfg.model, "audio+video", 3)
    assert load_encoders(model, str(path)) == ["audio_encoder", "video_encoder"]
    for name in ("audio_encoder", "video_encoder"):
        mine, theirs = getattr(model, name).state_dict(), getattr(pretrained.backbone, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    wider = tiny_config("model.encoder_dim=96", "model.encoder_heads=4").model
    with pytest.raises(ValueError, match="audio_encoder does not fit"):
        load_encoders(Classifier(wider, "audio", 3), str(path))


def test_time_frequency_masking_keeps_whole_rows_and_columns():
    torch.manual_seed(0)
    keep = time_frequency_keep(4, (24, 4), 0.2, 0.25, "cpu")
    assert keep.shape == (4, 19 * 3)  # round(24 * 0.8) rows x round(4 * 0.75) columns
    for row in keep:
        rows, columns = set((row // 4).tolist()), set((row % 4).tolist())
        assert (len(rows), len(columns)) == (19, 3) and len(set(row.tolist())) == 57
        assert set(row.tolist()) == {r * 4 + c for r in rows for c in columns}


def test_spec_augment_masks_one_span_per_axis_with_the_fill():
    torch.manual_seed(0)
    audio = torch.randn(6, 1, 100, 32)
    out = spec_augment(audio, max_time=20, max_freq=8, fill=0.5)
    hit = out != audio
    assert torch.all(out[hit] == 0.5)
    for sample in hit[:, 0]:
        full_rows = sample.all(dim=1).sum().item()  # masked time frames: whole rows
        full_columns = sample.all(dim=0).sum().item()  # masked bins: whole columns
        assert full_rows <= 20 and full_columns <= 8


def test_noise_is_20_db_below_the_signal():
    torch.manual_seed(0)
    audio = torch.randn(4, 1, 200, 64) * 3
    noise = add_noise(audio) - audio
    ratio = audio.pow(2).mean() / noise.pow(2).mean()
    assert 10 * torch.log10(ratio).item() == pytest.approx(20, abs=0.5)


def test_mixup_mixes_inputs_and_labels_with_one_weight():
    torch.manual_seed(0)
    batch = {
        "audio": torch.randn(4, 1, 8, 4),
        "video": torch.randn(4, 3, 2, 4, 4),
        "label": torch.eye(4),
        "key": ["a", "b", "c", "d"],
    }
    mixed = mixup(batch, 0.5)
    assert torch.allclose(mixed["label"].sum(1), torch.ones(4))
    lam = mixed["label"].max(dim=1).values.min()  # the larger share of each row
    assert 0.5 <= lam <= 1


def test_video_encoder_trains_at_half_the_lr_in_audio_video():
    model = Classifier(tiny_config().model, "audio+video", 3)
    groups = param_groups(model, 1e-5, {"video_encoder.": 0.5})
    video = {id(p) for p in model.video_encoder.parameters()}
    for group in groups:
        assert all((id(p) in video) == (group["lr_scale"] == 0.5) for p in group["params"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


def test_finetune_trains_and_evaluates_under_the_launcher(workdir):
    run_dir = launch(
        workdir,
        "audio",
        "train.max_steps=4",
        "finetune.mode=audio+video",
        "finetune.eval_clips=2",
        "finetune.eval_synthetic_clips=24",
        config="configs/tiny/finetune.json",
    )
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["clips"] == 24  # every evaluation clip once over the two ranks
    assert {"mAP", "accuracy", "mAP_2clips", "accuracy_2clips"} <= scores.keys()
    assert [line["step"] for line in metrics(run_dir)] == [1, 2, 3, 4]


def test_weighted_sampling_and_retrieval_under_the_launcher(workdir):
    run_dir = launch(
        workdir,
        "retrieval",
        "train.max_steps=2",
        "finetune.mode=retrieval",
        "finetune.weighted_sampling=true",
        "finetune.sampling_size=64",
        "finetune.eval_synthetic_clips=24",
        config="configs/tiny/finetune.json",
    )
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["pairs"] == 24 and 0 <= scores["a2v_R@1"] <= 1 and "v2a_median_rank" in scores
