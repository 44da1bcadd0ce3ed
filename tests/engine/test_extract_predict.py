"""engine/extract.py, engine/predict.py and export --format av-superb on real encoded files: a small synthetic
files with sound written from its clips, a tiny pre-training export and a tiny fine-tuned run directory."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open

from mavil.engine import extract, predict
from mavil.data.pipeline import LoaderSpec
from mavil.data.reference import reference_loader
from mavil.data.synthetic import ensure_synthetic
from mavil.engine import export
from mavil.model import MAViL, save_weights
from mavil.model.classifier import Classifier

from ..conftest import CONFIGS, tiny_config
from ..data.clips import decoded_clips

CLIPS, CLASSES = 6, 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return ensure_synthetic(
        tmp_path_factory.mktemp("cache"), clips=CLIPS, classes=CLASSES, seed=0, duration=4, workers=1
    )


def write_video_file(path, frames: np.ndarray, waveform: np.ndarray, fps: int = 2, rate: int = 16000):
    """An H.264 + AAC .mp4, as a camera or a download would give it."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width, video.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        samples = waveform.astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, start, Fraction(1, rate)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def files(shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    clips = list(decoded_clips(shards).items())[:2]
    return [write_video_file(folder / f"{key}.mp4", frames, wave) for key, (frames, wave, _) in clips]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = MAViL(tiny_config("model.encoder_norm=false").model)
    return save_weights(model, tmp_path_factory.mktemp("pre") / "m.safetensors")


@pytest.fixture(scope="module")
def run_dir(shards, tmp_path_factory):
    """A fine-tuned audio+video run directory as finetune.py leaves it: config.json and model.safetensors."""
    run = tmp_path_factory.mktemp("run")
    raw = json.loads((CONFIGS / "tiny" / "finetune.json").read_text())
    raw["model"]["encoder_norm"] = False
    raw["data"]["root"] = str(shards)
    raw["finetune"].update(mode="audio+video", eval_clips=2, loss="bce")
    (run / "config.json").write_text(json.dumps(raw))
    torch.manual_seed(0)
    from mavil.config import config_from_dict

    model = Classifier(config_from_dict(raw).model, "audio+video", CLASSES)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    save_weights(model, run / "model.safetensors")
    return run


def test_extract_from_shards_matches_the_evaluation_path(shards, weights, tmp_path):
    out = tmp_path / "emb.safetensors"
    assert (
        extract.main(
            [
                "--weights",
                str(weights),
                "--data",
                str(shards),
                "--out",
                str(out),
                "--layers",
                "--workers",
                "0",
                "--batch",
                "4",
            ]
        )
        == 0
    )
    cfg = tiny_config().model
    with safe_open(str(out), framework="pt") as f:
        keys = json.loads(f.metadata()["keys"])
        found = {name: f.get_tensor(name) for name in f.keys()}
    assert len(keys) == CLIPS and len(set(keys)) == CLIPS
    dim = cfg.encoder_dim
    assert found["audio"].shape == found["video"].shape == (CLIPS, dim) and found["fusion"].shape == (CLIPS, 2 * dim)
    assert found["audio_layers"].shape == (CLIPS, cfg.encoder_depth + 1, dim)
    assert found["fusion_layers"].shape == (CLIPS, cfg.fusion_depth + 1, 2 * dim)
    assert torch.equal(found["audio_layers"][:, -1], found["audio"])
    # the evaluation path by hand: the reference loader at train=False, the encoders' pooled outputs
    backbone, model_cfg = extract.load_backbone(weights)
    spec = LoaderSpec(
        CLIPS,
        model_cfg.audio_frames,
        model_cfg.audio_mel_bins,
        model_cfg.video_frames,
        model_cfg.video_size,
        train=False,
    )
    batch = next(iter(reference_loader(shards, spec)))
    assert batch["key"] == keys
    with torch.no_grad():
        a_um = backbone.audio_encoder.encode(backbone.audio_encoder.embed(batch["audio"]))
    torch.testing.assert_close(found["audio"], a_um[:, 1:].mean(dim=1), rtol=1e-5, atol=1e-5)


def test_extract_from_video_files_to_npz(files, weights, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert extract.main(["--weights", str(weights), *map(str, files), "--out", str(out), "--device", "cpu"]) == 0
    stored = np.load(out)
    assert list(stored["keys"]) == [str(p) for p in files]
    assert stored["audio"].shape == (2, 64) and stored["fusion"].shape == (2, 128) and "audio_layers" not in stored
    assert np.isfinite(stored["video"]).all()
    assert extract.main(["--weights", str(weights), str(tmp_path / "none.mp4"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("none.mp4: no such file")


def test_predict_prints_the_top_classes_per_file(run_dir, files, shards, capsys):
    names = json.loads((shards / "manifest.json").read_text())["label_names"]
    assert predict.main(["--run", str(run_dir), *map(str, files), "--json", "--top-k", "3", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(p) for p in files]
    for result in results:
        assert result["windows"] == 2 and len(result["top"]) == 3
        assert all(entry["class"] == names[entry["index"]] for entry in result["top"])
        scores = [entry["score"] for entry in result["top"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert predict.main(["--run", str(run_dir), str(files[0]), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{files[0]} (2 windows)" and len(lines) == 3 and lines[1].split()[1] in names


def test_predict_refuses_bad_inputs_in_one_line(run_dir, files, weights, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 100)
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    pre_run = tmp_path / "pre"
    pre_run.mkdir()
    (pre_run / "config.json").write_text((run_dir / "config.json").read_text())
    (pre_run / "model.safetensors").write_bytes(weights.read_bytes())
    cases = [
        ([str(run_dir), str(tmp_path / "missing.mp4")], "missing.mp4: no such file"),
        ([str(run_dir), str(broken)], "broken.mp4: not a readable media file"),
        ([str(empty_run), str(files[0])], "not a run directory"),
        ([str(pre_run), str(files[0])], "not a fine-tuned classifier"),
    ]
    for (run, path), message in cases:
        assert predict.main(["--run", run, path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_export_av_superb_of_a_finetuned_run(run_dir, tmp_path, capsys):
    assert export.main([str(run_dir), "--format", "av-superb"]) == 2  # tiny, 4 classes: not what the expert builds
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ViT-B" in err and "527-class" in err
    out = tmp_path / "mavil.pth"
    assert export.main([str(run_dir), "--format", "av-superb", "--force", "--out", str(out)]) == 0
    assert "WARNING" in capsys.readouterr().err
    state = torch.load(out, weights_only=True)["model"]
    assert state["head_av.weight"].shape == (CLASSES, 128) and "blocks_av.2.norm1.weight" in state


def test_export_av_superb_of_a_pretraining_run(weights, tmp_path, capsys):
    run = tmp_path / "pre"
    run.mkdir()
    (run / "model.safetensors").write_bytes(weights.read_bytes())
    assert export.main([str(run), "--format", "av-superb", "--force"]) == 0
    err = capsys.readouterr().err
    assert "ViT-B" in err and "encoder_norm" not in err  # trained without the encoder norm: the states match
    state = torch.load(run / "mavil_av_superb.pth", weights_only=True)["model"]
    assert "blocks_av.1.mlp.fc2.bias" in state and "blocks_av.2.norm1.weight" not in state
    assert not any(k.startswith(("head", "fc_norm", "norm", "decoder")) for k in state)
