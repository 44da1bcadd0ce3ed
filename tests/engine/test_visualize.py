"""Reconstruction figures (engine/visualize.py) and training curves (engine/plot.py), on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from mavil.config import ModelConfig
from mavil.data.encode import encode_audio, encode_video
from mavil.data.shards import ShardWriter, write_manifest
from mavil.engine import plot, visualize
from mavil.engine.visualize import GREY, NORM_PIX_NOTE, draw, reconstruction_panels, rescaled_norm_pix, restored_inputs
from mavil.model import MAViL, save_weights
from mavil.model.patch import patchify

from ..conftest import tiny_config

CLIPS = 2


class IdentityModel(MAViL):
    """A test double whose decoders return their targets: pred = target (norm-pix: the normalised target)."""

    def reconstruct(self, audio, video, mask_ratio=None):
        out = super().reconstruct(audio, video, mask_ratio)
        for modality in ("audio", "video"):
            target = out[f"{modality}_target"]
            out[f"{modality}_pred"] = normalised(target) if self.cfg.norm_pix_loss else target.clone()
        return out


def normalised(target: torch.Tensor) -> torch.Tensor:
    """What a perfect norm-pix model predicts: each target patch by its own mean and unbiased variance, eps 1e-6."""
    return (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()


def random_inputs(m: ModelConfig, batch: int = CLIPS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, m.audio_frames, m.audio_mel_bins, generator=g),
        torch.randn(batch, 3, m.video_frames, m.video_size, m.video_size, generator=g),
    )


def outputs_of(model: MAViL, seed: int = 0, mask_ratio: float = 0.7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return model.reconstruct(*random_inputs(model.cfg, seed=seed), mask_ratio)


@pytest.fixture(scope="module")
def model() -> MAViL:
    torch.manual_seed(0)
    return MAViL(tiny_config().model).eval()


# ---- the panels' arrays ------------------------------------------------------------------------------------


def test_panel_shapes(model):
    m = model.cfg
    panels = reconstruction_panels(outputs_of(model), m)
    for name in ("original", "masked", "reconstruction"):
        assert getattr(panels["video"], name).shape == (CLIPS, m.video_frames, m.video_size, m.video_size, 3)
        assert getattr(panels["audio"], name).shape == (CLIPS, m.audio_mel_bins, m.audio_frames, 3)  # frequency rows
        for modality in ("audio", "video"):
            image = getattr(panels[modality], name)
            assert image.min() >= 0.0 and image.max() <= 1.0


def test_masked_panel_greys_exactly_the_hidden_patches(model):
    m = model.cfg
    outputs = outputs_of(model)
    panels = reconstruction_panels(outputs, m)
    pt, pf = m.audio_patch
    for b in range(CLIPS):
        audio = panels["audio"]
        for n, hidden in enumerate(outputs["audio_mask"][b].tolist()):  # token n covers time block t, frequency block f
            t, f = divmod(n, m.audio_mel_bins // pf)
            block = (b, slice(f * pf, (f + 1) * pf), slice(t * pt, (t + 1) * pt))
            if hidden:
                assert (audio.masked[block] == GREY).all() and audio.hidden[block].all()
            else:
                np.testing.assert_array_equal(audio.masked[block], audio.original[block])
                np.testing.assert_array_equal(audio.reconstruction[block], audio.original[block])
                assert not audio.hidden[block].any()
        vt, vh, vw = m.video_patch
        grid_h = m.video_size // vh
        video = panels["video"]
        for n, hidden in enumerate(outputs["video_mask"][b].tolist()):  # token n: frames 2t, 2t + 1, row y, column x
            t, rest = divmod(n, grid_h * (m.video_size // vw))
            y, x = divmod(rest, m.video_size // vw)
            block = (b, slice(t * vt, (t + 1) * vt), slice(y * vh, (y + 1) * vh), slice(x * vw, (x + 1) * vw))
            if hidden:
                assert (video.masked[block] == GREY).all() and video.hidden[block].all()
            else:
                np.testing.assert_array_equal(video.masked[block], video.original[block])
                np.testing.assert_array_equal(video.reconstruction[block], video.original[block])
    hidden_tokens = outputs["audio_mask"].sum().item()
    assert panels["audio"].hidden.sum() == hidden_tokens * pt * pf  # nothing else greyed
    assert (panels["audio"].masked == GREY).all(-1).sum() == hidden_tokens * pt * pf


def test_original_panel_undoes_the_imagenet_normalisation(model):
    m = model.cfg
    outputs = outputs_of(model)
    v_orig, _, _ = restored_inputs(
        outputs["video_pred"],
        outputs["video_mask"],
        outputs["video_target"],
        tuple(m.video_patch),
        3,
        (m.video_frames, m.video_size, m.video_size),
        False,
    )
    pixel = v_orig[0, :, 0, 0, 0]  # clip 0, frame 0, row 0, column 0, in input units
    expected = (pixel * torch.tensor([0.229, 0.224, 0.225]) + torch.tensor([0.485, 0.456, 0.406])).clamp(0, 1)
    drawn = reconstruction_panels(outputs, m)["video"].original[0, 0, 0, 0]
    np.testing.assert_allclose(drawn, expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_a_model_returning_its_targets_reconstructs_the_original(norm_pix):
    torch.manual_seed(0)
    m = tiny_config(f"model.norm_pix_loss={str(norm_pix).lower()}").model
    identity = IdentityModel(m).eval()
    outputs = outputs_of(identity)
    for modality, chans, size, patch in (
        ("audio", 1, (m.audio_frames, m.audio_mel_bins), m.audio_patch),
        ("video", 3, (m.video_frames, m.video_size, m.video_size), m.video_patch),
    ):
        original, restored, _ = restored_inputs(
            outputs[f"{modality}_pred"],
            outputs[f"{modality}_mask"],
            outputs[f"{modality}_target"],
            tuple(patch),
            chans,
            size,
            norm_pix,
        )
        torch.testing.assert_close(restored, original, rtol=0, atol=1e-5)
    panels = reconstruction_panels(outputs, m)
    for modality in ("audio", "video"):  # images: colours of values equal to ~1e-6 (norm-pix may move a colour step)
        np.testing.assert_allclose(
            panels[modality].reconstruction, panels[modality].original, atol=0 if not norm_pix else 0.02
        )
        if norm_pix:
            close = np.isclose(panels[modality].reconstruction, panels[modality].original, atol=1e-5).all(-1)
            assert close.mean() > 0.999


def test_norm_pix_rescaling_inverts_the_loss_normalisation():
    target = torch.randn(3, 5, 48) * torch.rand(3, 5, 1) * 4 + torch.randn(3, 5, 1)
    torch.testing.assert_close(rescaled_norm_pix(normalised(target), target), target, rtol=0, atol=1e-5)
    # the same normalisation as the loss: a perfect norm-pix prediction has zero masked_mse
    from mavil.kernels import masked_mse_reference

    assert masked_mse_reference(normalised(target), target, torch.ones(3, 5), norm_pix=True) < 1e-10


def test_patchify_targets_and_the_drawn_grid(model):
    m = model.cfg
    audio, video = random_inputs(m)
    torch.manual_seed(0)
    outputs = model.reconstruct(audio, video, 0.7)
    torch.testing.assert_close(outputs["audio_target"], patchify(audio, tuple(m.audio_patch)))
    fig = draw(reconstruction_panels(outputs, m), ["a", "b"], "title\n" + NORM_PIX_NOTE)
    assert len(fig.axes) == CLIPS * 3 * (m.video_frames + 1)  # per clip 3 rows of T frames + 1 spectrogram
    spectrogram_axes = fig.axes[m.video_frames :: m.video_frames + 1]
    assert len(spectrogram_axes) == CLIPS * 3
    assert all(ax.images[0].origin == "lower" for ax in spectrogram_axes)  # frequency up
    assert spectrogram_axes[0].images[0].get_array().shape == (m.audio_mel_bins, m.audio_frames, 3)  # time along x


# ---- the command line on a small shard set -----------------------------------------------------------------


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def square_clip(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.full((frames, 64, 80, 3), 40, np.uint8)
    for i in range(frames):
        y, x = rng.integers(0, 40, 2)
        video[i, y : y + 24, x : x + 24] = (230, 200, 30)
    return video


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    writer = ShardWriter(root, 2)
    for i in range(3):
        writer.add(
            f"clip{i}",
            encode_video(square_clip(5, i)),
            "webm",
            encode_audio(tone(1.5, 300 + 200 * i)),
            {"labels": [i % 2], "duration": 1.5, "frames": 5, "source": "test"},
        )
    write_manifest(root, writer.close(), ["a", "b"], {}, [])
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shards, model):
    run = tmp_path_factory.mktemp("run")
    cfg = tiny_config(f"data.root={shards}")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_weights(model, run / "model.safetensors")
    return run


def test_command_line_writes_the_figure(run_dir, tmp_path, capsys, monkeypatch):
    figures, draw_figure = [], visualize.draw

    def drawn(*args):
        figures.append(draw_figure(*args))
        return figures[-1]

    monkeypatch.setattr(visualize, "draw", drawn)
    out = tmp_path / "figs" / "recon.png"
    assert visualize.main(["--run", str(run_dir), "--out", str(out), "--clips", str(CLIPS), "--seed", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    m = tiny_config().model
    (fig,) = figures
    assert len(fig.axes) == CLIPS * 3 * (m.video_frames + 1)
    assert NORM_PIX_NOTE in fig._suptitle.get_text()  # the tiny config trains with norm_pix_loss
    width, height = fig.get_size_inches() * 100
    assert imread(out).shape == (round(height), round(width), 4)
    assert out.stat().st_size < 500_000
    out2 = tmp_path / "same.png"  # --weights with --config names the same run
    assert (
        visualize.main(
            [
                "--weights",
                str(run_dir / "model.safetensors"),
                "--config",
                str(run_dir / "config.json"),
                "--out",
                str(out2),
                "--clips",
                str(CLIPS),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    title_rows = 60  # the titles name the run and the weights file; everything below them is the same
    np.testing.assert_array_equal(imread(out2)[title_rows:], imread(out)[title_rows:])


def test_stage_2_models_are_refused(tmp_path, run_dir, capsys):
    student = MAViL(tiny_config("model.stage=2", f"model.teacher={run_dir / 'model.safetensors'}").model)
    save_weights(student, tmp_path / "model.safetensors")
    code = visualize.main(
        [
            "--weights",
            str(tmp_path / "model.safetensors"),
            "--config",
            str(run_dir / "config.json"),
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert code == 2 and "only stage-1 models reconstruct" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---- training curves ---------------------------------------------------------------------------------------


def write_metrics(run, lines: list[dict]):
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_curves_of_two_runs_with_different_parts(tmp_path, capsys):
    one = write_metrics(
        tmp_path / "one",
        [
            {
                "step": s,
                "epoch": s / 4,
                "lr": 1e-3 * s,
                "loss": 3.0 / s,
                "loss_recon_audio": 1.0 / s,
                "loss_inter": 2.0,
                "samples_per_s": 50.0,
                "tokens_per_s": 3e3,
            }
            for s in (1, 2, 3)
        ],
    )
    two = write_metrics(
        tmp_path / "two",
        [{"step": s, "lr": 1e-3, "loss": 1.0 / s, "loss_recon_video": 0.5, "samples_per_s": 60.0} for s in (1, 2)],
    )
    runs = {"stage 1": plot.read_metrics(one), "stage 2": plot.read_metrics(two)}
    assert plot.quantities(list(runs.values())) == [
        "loss",
        "loss_inter",
        "loss_recon_audio",
        "loss_recon_video",
        "lr",
        "samples_per_s",
    ]
    fig = plot.draw_curves(runs)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert list(panels) == plot.quantities(list(runs.values()))
    labels = {name: [line.get_label() for line in ax.get_lines()] for name, ax in panels.items()}
    assert labels["loss"] == ["stage 1", "stage 2"] and labels["lr"] == ["stage 1", "stage 2"]
    assert labels["loss_recon_audio"] == ["stage 1"] and labels["loss_recon_video"] == ["stage 2"]
    np.testing.assert_array_equal(panels["loss"].get_lines()[1].get_xydata(), [[1, 1.0], [2, 0.5]])
    out = tmp_path / "curves.png"
    assert plot.main([str(one), str(two), "--labels", "stage 1", "stage 2", "--out", str(out)]) == 0
    assert imread(out).ndim == 3 and str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot.main([str(one), str(two), "--labels", "only one"])
