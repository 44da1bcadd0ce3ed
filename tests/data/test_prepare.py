"""prepare: video files of any container -> shards at 2 fps, short side 256, 16 kHz mono; bad files are
listed in the manifest with their reason and counted in the exit status."""

from __future__ import annotations

import csv
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mavil.data import prepare
from mavil.data.encode import SAMPLE_RATE, SHORT_SIDE, VIDEO_FPS, encode_audio
from mavil.data.shards import read_manifest

from .clips import decoded_clips

TONE = 440.0  # Hz, in every input's audio


def grey_level(index: int) -> int:
    """Input frame `index` is a flat grey of this level, so an output frame tells which input it came from
    (frames 20 apart share a level; two re-encodings move a level by up to ~4)."""
    return 12 * (index % 20)


def write_media(
    path: Path,
    container_format: str,
    video_codec: str,
    audio_codec: str | None,
    seconds: float,
    fps: int,
    width: int,
    height: int,
    audio_rate: int = 44100,
) -> Path:
    """A clip with flat grey frames numbered by grey_level and a stereo 440-Hz tone (none if audio_codec is None)."""
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream(audio_codec, rate=audio_rate, layout="stereo") if audio_codec else None
        for i in range(round(seconds * fps)):
            rgb = np.full((height, width, 3), grey_level(i), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            write_tone(container, audio, seconds, audio_rate)
    return path


def write_tone(container, stream, seconds: float, rate: int) -> None:
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * TONE * t)).astype(np.float32)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, len(tone), chunk):
        samples = np.stack([tone[start : start + chunk]] * 2)  # (2, n) planar stereo
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder of two good clips (H.264 + AAC in MP4, VP8 + Opus in WebM, in a subfolder) and three bad files."""
    root = tmp_path_factory.mktemp("media")
    (root / "sub").mkdir()
    write_media(root / "talk.mp4", "mp4", "libx264", "aac", 3, 25, 320, 240)
    write_media(root / "sub" / "wide clip.webm", "webm", "libvpx", "libopus", 2, 24, 256, 144, audio_rate=48000)
    write_media(root / "silent.mp4", "mp4", "mpeg4", None, 2, 25, 160, 120)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / ".hidden").write_text("not an input")
    return root


def dominant_frequency(waveform: np.ndarray) -> float:
    magnitude = np.abs(np.fft.rfft(waveform))
    return float(np.argmax(magnitude) * SAMPLE_RATE / len(waveform))


@pytest.fixture(scope="module")
def prepared(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "shards"
    status = prepare.main([str(media), "--out", str(out), "--workers", "2", "--clips-per-shard", "1"])
    return out, status


def test_good_clips_land_in_shards_at_2_fps_short_side_256_16_khz_mono(prepared):
    out, _ = prepared
    clips = decoded_clips(out)
    assert sorted(clips) == ["sub_wide_clip", "talk"]
    frames, waveform, meta = clips["talk"]  # 3 s, 25 fps, 320 x 240
    assert frames.shape == (3 * VIDEO_FPS, SHORT_SIDE, 342, 3) and meta["frames"] == 6
    assert meta["duration"] == pytest.approx(3.0) and meta["labels"] == [] and meta["source"] == "talk.mp4"
    assert abs(len(waveform) - 3 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    assert dominant_frequency(waveform) == pytest.approx(TONE, abs=2)
    frames, waveform, meta = clips["sub_wide_clip"]  # 2 s, 24 fps, 256 x 144
    assert frames.shape == (2 * VIDEO_FPS, SHORT_SIDE, 456, 3) and meta["source"] == "sub/wide clip.webm"
    assert abs(len(waveform) - 2 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    assert dominant_frequency(waveform) == pytest.approx(TONE, abs=2)


@pytest.mark.parametrize("key, fps", [("talk", 25), ("sub_wide_clip", 24)])
def test_each_output_frame_is_the_last_input_frame_at_or_before_its_time(prepared, key, fps):
    frames, _, _ = decoded_clips(prepared[0])[key]
    for i, frame in enumerate(frames):
        shown = int(np.floor(i / VIDEO_FPS * fps + 1e-9))  # index of the last input frame at or before i / 2 s
        assert abs(frame.mean() - grey_level(shown)) < 6, (i, frame.mean(), grey_level(shown))


def test_bad_files_are_listed_with_reasons_and_counted_in_the_exit_status(prepared, capsys):
    out, status = prepared
    manifest = read_manifest(out)
    reasons = {entry["source"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(reasons) == ["corrupt.mp4", "empty.mp4", "silent.mp4"]
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["silent.mp4"] == "no audio stream"
    assert reasons["corrupt.mp4"].startswith("not a readable media file")
    assert status == 3
    assert manifest["clips"] == 2 and len(manifest["shards"]) == 2 and manifest["label_names"] == []


def test_csv_labels_are_class_names_numbered_in_sorted_order(media, tmp_path):
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    for name in ("talk.mp4", "sub/wide clip.webm"):
        shutil.copy(media / name, tmp_path / "videos" / name)
    table = tmp_path / "clips.csv"  # paths relative to the CSV's folder
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["path", "labels"],
                ["videos/talk.mp4", "speech;dog"],
                ["videos/sub/wide clip.webm", "cat"],
                ["videos/missing.mp4", "dog"],
            ]
        )
    summary = prepare.prepare(table, tmp_path / "out", workers=1, progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["label_names"] == ["cat", "dog", "speech"]
    assert manifest["skipped"] == [{"source": "videos/missing.mp4", "reason": "file not found"}]
    assert (summary.clips, summary.shards) == (2, 1)
    clips = decoded_clips(tmp_path / "out")
    assert {key: meta["labels"] for key, (_, _, meta) in clips.items()} == {"talk": [1, 2], "sub_wide_clip": [0]}
    assert clips["talk"][2]["source"] == "videos/talk.mp4"


def test_a_csv_without_the_columns_is_refused(tmp_path):
    (tmp_path / "clips.csv").write_text("file,label\na.mp4,dog\n")
    with pytest.raises(ValueError, match="needs the columns path,labels"):
        prepare.prepare(tmp_path / "clips.csv", tmp_path / "out", workers=1, progress=False)


def test_summary_line_and_exit_status_documented(media, tmp_path, capsys):
    status = prepare.main([str(media / "sub"), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert status == 0
    assert "prepared 1 clips into 1 shards, skipped 0 (see manifest.json)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    assert "Exit status" in capsys.readouterr().out


def test_keys_are_sanitised_unique_and_fit_a_tar_member_name():
    names = ["a b.mp4", "a_b.webm", "sub/x.y.mov", "a b.mkv", "...avi", "d/" + "x" * 200 + "_id42.mp4"]
    keys = prepare.sanitised_keys(names)
    assert keys[:5] == ["a_b", "a_b-2", "sub_x_y", "a_b-3", "clip"]
    assert len(keys[5]) == prepare.MAX_KEY and keys[5].endswith("x_id42")


def test_output_size_keeps_the_aspect_ratio_with_even_sides():
    assert prepare.output_size(320, 240, 1.0) == (342, 256)
    assert prepare.output_size(1080, 1920, 1.0) == (256, 456)
    assert prepare.output_size(720, 576, 16 / 15) == (342, 256)  # PAL 4:3 with non-square pixels
    assert prepare.output_size(1001, 999, 1.0) == (256, 256)


def test_audio_only_and_too_long_files_are_skipped_with_their_reason(media, tmp_path):
    (tmp_path / "voice.flac").write_bytes(encode_audio(np.zeros(SAMPLE_RATE, np.float32)))
    voice = prepare.prepare_clip(prepare.Source(tmp_path / "voice.flac", "voice", "voice.flac"))
    assert voice == prepare.Skipped("voice.flac", "no video stream")
    long = prepare.prepare_clip(prepare.Source(media / "talk.mp4", "talk", "talk.mp4"), max_duration=1.0)
    assert isinstance(long, prepare.Skipped) and long.reason.startswith("longer than --max-duration 1 s")
