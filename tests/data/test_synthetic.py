"""The synthetic set: deterministic bytes, the shard format, and audio and video that match per clip
and differ per class, all checked on the decoded shards."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from mavil.data import synthetic
from mavil.data.encode import ENCODING, SAMPLE_RATE, SHORT_SIDE, VIDEO_FPS
from mavil.data.shards import read_manifest

from .clips import decoded_clips

from ..conftest import REPO

CLIPS, CLASSES, DURATION, PER_SHARD = 6, 3, 4, 4  # clips i and i + 3 share a class


def read_dir(root) -> dict[str, bytes]:
    """Every file of a shard directory, by name."""
    return {path.name: path.read_bytes() for path in sorted(root.iterdir())}


def audio_onset_frames(waveform: np.ndarray) -> list[int]:
    """Frames whose time an attack starts at: the 25-ms RMS more than 1.6x what it was 50 ms before."""
    hop = SAMPLE_RATE // 40
    rms = np.sqrt(np.mean(waveform[: len(waveform) // hop * hop].reshape(-1, hop) ** 2, axis=1))  # (windows,)
    rising = np.zeros(len(rms), bool)
    rising[2:] = rms[2:] > 1.6 * rms[:-2] + 0.02
    starts = np.flatnonzero(rising & ~np.roll(rising, 1))
    return sorted({round(j * hop / SAMPLE_RATE * VIDEO_FPS) for j in starts})


def object_track(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The bright object on the dark background: (T, 2) centres, (T,) flashing, its colour (3,) when not
    flashing, and how much of its bounding box it fills."""
    masks = frames.max(axis=3) > 160  # (T, H, W)
    centres = np.array([np.argwhere(mask).mean(axis=0) for mask in masks])
    lightness = np.array([np.median(frame.min(axis=2)[mask]) for frame, mask in zip(frames, masks)])
    flashing = lightness > 100  # the class colour's darkest channel is ~36; lightened towards white ~167
    steady = ~flashing
    colour = np.median(np.concatenate([f[m] for f, m in zip(frames[steady], masks[steady])]), axis=0)
    ys, xs = np.nonzero(masks[0])
    fill = masks[0].sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return centres, flashing, colour, fill


def spectrum(waveform: np.ndarray) -> np.ndarray:
    """(800,) unit-norm magnitude spectrum in 10-Hz bands."""
    magnitude = np.abs(np.fft.rfft(waveform))[: len(waveform) // 2]
    bands = magnitude[: len(magnitude) // 800 * 800].reshape(800, -1).sum(axis=1)
    return bands / np.linalg.norm(bands)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "seed0"
    synthetic.generate(
        root, CLIPS, CLASSES, seed=0, duration=DURATION, clips_per_shard=PER_SHARD, workers=1, progress=False
    )
    return root


@pytest.fixture(scope="module")
def clips(dataset):
    return decoded_clips(dataset)


def test_same_seed_same_bytes_with_any_number_of_workers_and_another_seed_differs(dataset, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mavil.data.synthetic",
        "--clips",
        str(CLIPS),
        "--classes",
        str(CLASSES),
        "--duration",
        str(DURATION),
        "--clips-per-shard",
        str(PER_SHARD),
        "--workers",
        "2",
    ]
    subprocess.run([*command, "--out", str(tmp_path / "again"), "--seed", "0"], cwd=REPO, check=True)
    assert read_dir(tmp_path / "again") == read_dir(dataset)
    synthetic.generate(
        tmp_path / "seed1",
        CLIPS,
        CLASSES,
        seed=1,
        duration=DURATION,
        clips_per_shard=PER_SHARD,
        workers=1,
        progress=False,
    )
    other = read_dir(tmp_path / "seed1")
    assert other.keys() == read_dir(dataset).keys()
    assert other["shard-000000.tar"] != read_dir(dataset)["shard-000000.tar"]


def test_manifest_counts_and_metadata(dataset, clips):
    manifest = read_manifest(dataset)
    assert manifest["clips"] == CLIPS and [s["clips"] for s in manifest["shards"]] == [4, 2]
    assert manifest["label_names"] == ["class-00", "class-01", "class-02"] and manifest["skipped"] == []
    assert manifest["encoding"] == {
        **ENCODING,
        "synthetic": {"seed": 0, "classes": CLASSES, "clips": CLIPS, "duration": DURATION, "frame_size": [256, 320]},
    }
    assert (dataset / "shard-000001.idx").read_text().startswith("v1.2 2\n")
    for i, (key, (_, _, meta)) in enumerate(sorted(clips.items())):
        assert key == f"syn0-{i:07d}" and meta["key"] == key
        assert meta["labels"] == [i % CLASSES] and meta["source"] == "synthetic"
        assert meta["duration"] == DURATION and meta["frames"] == DURATION * VIDEO_FPS
        assert meta["onsets"] and all(0 < t < DURATION for t in meta["onsets"])


def test_clips_decode_to_the_shard_format(clips):
    for frames, waveform, _ in clips.values():
        assert frames.shape == (DURATION * VIDEO_FPS, SHORT_SIDE, synthetic.FRAME_WIDTH, 3)
        assert waveform.shape == (DURATION * SAMPLE_RATE,) and np.abs(waveform).max() <= 1.0


def test_the_object_moves_and_flashes_exactly_at_the_audio_onsets(clips):
    for key, (frames, waveform, meta) in clips.items():
        centres, flashing, _, _ = object_track(frames)
        moved = np.hypot(*np.diff(centres, axis=0).T) > 8  # (T-1,): frame i+1 has the object elsewhere
        onsets = [round(t * VIDEO_FPS) for t in meta["onsets"]]
        assert list(np.flatnonzero(moved) + 1) == onsets, key
        assert list(np.flatnonzero(flashing)) == onsets, key
        assert audio_onset_frames(waveform) == onsets, key


def test_classes_differ_in_spectrum_colour_and_shape_and_clips_of_one_class_do_not(clips):
    ordered = [clips[key] for key in sorted(clips)]
    spectra = [spectrum(waveform) for _, waveform, _ in ordered]
    looks = [object_track(frames)[2:] for frames, _, _ in ordered]
    for a in range(CLIPS):
        for b in range(a + 1, CLIPS):
            similarity = spectra[a] @ spectra[b]
            colour_distance = np.abs(looks[a][0] - looks[b][0]).sum()
            fill_difference = abs(looks[a][1] - looks[b][1])
            if a % CLASSES == b % CLASSES:
                assert similarity > 0.9 and colour_distance < 30 and fill_difference < 0.08, (a, b)
            else:
                assert similarity < 0.5 and colour_distance > 90 and fill_difference > 0.15, (a, b)


def test_class_styles_do_not_depend_on_the_number_of_classes_and_stay_distinct():
    styles = [synthetic.class_style(k) for k in range(64)]
    assert len({(s.shape, s.rgb) for s in styles}) == 64
    assert len({round(s.f0, 3) for s in styles}) == 64
    assert all(s.harmonics[0] == 1.0 for s in styles)


def test_ensure_synthetic_generates_once_then_reuses(tmp_path, monkeypatch):
    calls = []
    generate = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: calls.append(args) or generate(*args, **kwargs))
    first = synthetic.ensure_synthetic(tmp_path, 2, 2, 0, 1, workers=1)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    started = time.perf_counter()
    second = synthetic.ensure_synthetic(tmp_path, 2, 2, 0, 1.0, workers=1)
    assert time.perf_counter() - started < 0.1
    assert first == second == tmp_path / "synthetic-2-2-0-1" and len(calls) == 1
    assert (second / "manifest.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-2-2-0-1"]  # no staging directory left behind
    assert read_manifest(second)["clips"] == 2


def test_ensure_synthetic_defaults_to_the_mavil_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAVIL_CACHE", str(tmp_path / "cache"))
    assert synthetic.default_cache_dir() == tmp_path / "cache"
    assert synthetic.ensure_synthetic(None, 1, 1, 3, 1, workers=1) == tmp_path / "cache" / "synthetic-1-1-3-1"


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(out, *args, **kwargs):
        (out / "shard-000000.tar").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.ensure_synthetic(tmp_path, 2, 2, 0, 1, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(tmp_path / "full", 1, 1, 0, 1, workers=1, progress=False)
    with pytest.raises(ValueError, match="whole number"):
        synthetic.generate(tmp_path / "new", 1, 1, 0, 2.5, workers=1, progress=False)
    with pytest.raises(ValueError, match="non-negative"):
        synthetic.generate(tmp_path / "new", 1, 1, -1, 1, workers=1, progress=False)
