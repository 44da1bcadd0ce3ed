"""prepare at AudioSet scale, on real encoded clips: AudioSet's published CSVs with a folder of downloads (cut where
they are full videos, listed where missing), phone video turned upright, --part K/N then merge equal to one run, a
run killed at a random clip and resumed equal to one that was not, and the refusals of a rerun with other settings."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mavil.data import prepare
from mavil.data.encode import SAMPLE_RATE, VIDEO_FPS
from mavil.data.health import ensure_health
from mavil.data.pipeline import Loader, LoaderSpec
from mavil.data.reference import read_clips
from mavil.data.shards import read_manifest

from .clips import decoded_clips
from .test_prepare import grey_level, write_media, write_tone
from .test_sources import CLASS_INDEX

FPS = 8  # input frame rate: input frame i is grey_level(i)
REPO = Path(__file__).resolve().parents[2]


def small_clip(path: Path, seconds: float, fmt: str = "mp4") -> Path:
    codecs = {"mp4": ("libx264", "aac"), "webm": ("libvpx", "libopus"), "matroska": ("libx264", "aac")}[fmt]
    return write_media(path, fmt, *codecs, seconds, FPS, 64, 48, audio_rate=48000 if fmt == "webm" else 44100)


def frame_levels(frames: np.ndarray) -> list[float]:
    return [float(frame.mean()) for frame in frames]


# AudioSet as published
@pytest.fixture(scope="module")
def audioset(tmp_path_factory):
    root = tmp_path_factory.mktemp("audioset")
    (root / "class_labels_indices.csv").write_text(CLASS_INDEX)
    (root / "segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=6\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--fullvideo, 2.000, 5.000, "/m/09x0r,/m/05zppz"\n'  # a 6-s download: cut to [2, 5)
        'alreadycut1, 30.000, 33.000, "/m/0jbk"\n'  # a 3-s download: the segment itself
        'missingone1, 1.000, 4.000, "/m/05zppz"\n'  # not downloaded
        'startszero1, 0.000, 3.000, "/m/0jbk,/m/09x0r"\n'
        'missingtwo2, 7.000, 10.000, "/m/0jbk"\n'
    )
    (root / "dl" / "ab").mkdir(parents=True)
    small_clip(root / "dl" / "--fullvideo.mp4", 6)
    small_clip(root / "dl" / "ab" / "alreadycut1.webm", 3, "webm")
    small_clip(root / "dl" / "startszero1.mkv", 3, "matroska")
    (root / "dl" / "missingtwo2.mp4.part").write_bytes(b"half a download")
    out = root / "out"
    status = prepare.main(
        [
            str(root / "segments.csv"),
            "--class-index",
            str(root / "class_labels_indices.csv"),
            "--downloads",
            str(root / "dl"),
            "--out",
            str(out),
            "--workers",
            "1",
        ]
    )
    return out, status


def test_audioset_segments_become_clips_with_its_label_names_and_order(audioset, capsys):
    out, status = audioset
    manifest = read_manifest(out)
    assert status == 0 and manifest["clips"] == 3 and manifest["skipped"] == []
    assert manifest["label_names"] == ["Speech", "Male speech, man speaking", "Animal"]
    assert manifest["label_ids"] == ["/m/09x0r", "/m/05zppz", "/m/0jbk"]
    clips = decoded_clips(out)
    assert {key: meta["labels"] for key, (_, _, meta) in clips.items()} == {
        "--fullvideo": [0, 1],
        "alreadycut1": [2],
        "startszero1": [0, 2],
    }
    for key, (frames, waveform, meta) in clips.items():
        assert meta["duration"] == pytest.approx(3.0, abs=0.02) and len(frames) == 3 * VIDEO_FPS, key
        assert abs(len(waveform) - 3 * SAMPLE_RATE) < 0.03 * SAMPLE_RATE, key


def test_a_full_download_is_cut_to_its_segment_and_a_cut_one_used_from_its_start(audioset):
    clips = decoded_clips(audioset[0])
    cut = frame_levels(clips["--fullvideo"][0])  # output frame j: input frame at 2 s + j / 2 s
    assert cut == pytest.approx([grey_level(round((2 + j / VIDEO_FPS) * FPS)) for j in range(6)], abs=6)
    whole = frame_levels(clips["alreadycut1"][0])
    assert whole == pytest.approx([grey_level(round(j / VIDEO_FPS * FPS)) for j in range(6)], abs=6)


def test_missing_downloads_are_listed_not_errors(audioset):
    out, _ = audioset
    assert (out / "missing.txt").read_text() == "missingone1,1.000,4.000\nmissingtwo2,7.000,10.000\n"
    assert read_manifest(out)["missing"] == 2


def test_the_summary_names_the_missing_list(tmp_path, capsys):
    summary = prepare.Summary(3, 1, [], ["a,1,2", "b,1,2"], tmp_path)
    assert prepare.summary_lines(summary)[1] == f"2 sources have no download (listed in {tmp_path / 'missing.txt'})"


def test_no_download_at_all_is_refused(audioset, tmp_path, capsys):
    root = audioset[0].parent
    (tmp_path / "empty").mkdir()
    status = prepare.main(
        [
            str(root / "segments.csv"),
            "--class-index",
            str(root / "class_labels_indices.csv"),
            "--downloads",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 2 and "none of the 5 segments" in capsys.readouterr().err


def test_vggsound_as_published_with_a_split(audioset, tmp_path):
    (tmp_path / "dl").mkdir()
    small_clip(tmp_path / "dl" / "vggfull1234.mp4", 12.5)  # a whole video: [2, 12) is cut from it
    os.link(audioset[0].parent / "dl" / "ab" / "alreadycut1.webm", tmp_path / "dl" / "alreadycut1.webm")
    (tmp_path / "vggsound.csv").write_text(
        'vggfull1234,2,dog barking,train\nalreadycut1,30,"cattle, bovinae '
        'cowbell",train\nmissingone1,1,dog barking,test\nnotthere123,4,'
        "airplane,train\n"
    )
    summary = prepare.prepare(
        tmp_path / "vggsound.csv", tmp_path / "out", downloads=tmp_path / "dl", split="train", workers=1, progress=False
    )
    manifest = read_manifest(tmp_path / "out")
    assert manifest["label_names"] == ["airplane", "cattle, bovinae cowbell", "dog barking"]
    assert (summary.clips, summary.missing) == (2, ["notthere123,4"])
    clips = decoded_clips(tmp_path / "out")
    assert {key: (meta["labels"], meta["duration"]) for key, (_, _, meta) in clips.items()} == {
        "vggfull1234": ([2], 10.0),
        "alreadycut1": ([1], 3.0),
    }  # VGGSound's 10 s; a 3-s cut used whole
    assert frame_levels(clips["vggfull1234"][0]) == pytest.approx(
        [grey_level(round((2 + j / VIDEO_FPS) * FPS)) for j in range(20)], abs=6
    )


def test_the_full_or_cut_rule():
    assert prepare.is_full_video(40.0, (30.0, 40.0)) and prepare.is_full_video(39.6, (30.0, 40.0))
    assert not prepare.is_full_video(10.0, (30.0, 40.0)) and not prepare.is_full_video(10.9, (30.0, 40.0))
    assert prepare.is_full_video(10.15, (0.2, 10.2)) and not prepare.is_full_video(10.0, (0.2, 10.2))
    assert prepare.is_full_video(35.0, (30.0, 40.0))  # a video that ends inside its segment: longer than a cut
    assert prepare.is_full_video(None, (5.0, 15.0))


def test_a_cut_keeps_sound_and_picture_together(tmp_path):
    """Second s of the input is grey 40 s with a (300 + 100 s)-Hz tone; the cut [2.5, 4.5) must show and sound
    seconds 2, 3, 3, 4 in its half seconds."""
    path, rate = tmp_path / "steps.mp4", 44100
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(60):
            grey = np.full((48, 64, 3), 40 * (i // 10), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")))
        container.mux(video.encode())
        t = np.arange(6 * rate) / rate
        tone = (0.5 * np.sin(2 * np.pi * (300 + 100 * np.floor(t)) * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    frames, waveform, duration = prepare.decode_clip(path, 600.0, (2.5, 4.5))
    assert duration == pytest.approx(2.0) and len(waveform) == 2 * SAMPLE_RATE
    assert frame_levels(frames) == pytest.approx([80, 120, 120, 160], abs=3)
    half = SAMPLE_RATE // 2
    peaks = [np.argmax(np.abs(np.fft.rfft(waveform[k * half : (k + 1) * half]))) * 2 for k in range(4)]
    assert peaks == [500, 600, 600, 700]


# phone video
def pattern(height: int, width: int) -> np.ndarray:
    """A frame no turn or flip leaves as it is: four quadrants of different colours."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2, : width // 2] = (250, 20, 20)
    rgb[: height // 2, width // 2 :] = (20, 250, 20)
    rgb[height // 2 :, : width // 2] = (20, 20, 250)
    rgb[height // 2 :, width // 2 :] = (250, 250, 20)
    return rgb


def pattern_clip(path: Path, rotation: float | None, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if rotation is not None:
            video.set_display_rotation(rotation)  # the display matrix a phone writes
        audio = container.add_stream("aac", rate=44100, layout="stereo")
        for _ in range(round(seconds * FPS)):
            container.mux(video.encode(av.VideoFrame.from_ndarray(pattern(48, 64), format="rgb24")))
        container.mux(video.encode())
        write_tone(container, audio, seconds, 44100)
    return path


@pytest.mark.parametrize("rotation, turn", [(-90, -1), (90, 1), (180, 2)])
def test_a_rotated_clip_is_stored_upright(tmp_path, rotation, turn):
    flat = prepare.prepare_clip(prepare.Source(pattern_clip(tmp_path / "flat.mp4", None), "flat", "flat.mp4"))
    phone = prepare.prepare_clip(prepare.Source(pattern_clip(tmp_path / "phone.mp4", rotation), "phone", "phone.mp4"))
    with av.open(str(tmp_path / "phone.mp4")) as container:
        assert (next(container.decode(video=0)).rotation - rotation) % 360 == 0
    flat_frames, phone_frames = (decode(clip.video) for clip in (flat, phone))
    assert flat_frames.shape[1:3] == (256, 342)
    expected = np.rot90(flat_frames, turn, axes=(1, 2))  # counterclockwise quarter turns, as FFmpeg displays it
    assert phone_frames.shape == expected.shape
    assert np.abs(phone_frames.astype(int) - expected).mean() < 3


def decode(data: bytes) -> np.ndarray:
    import io

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_an_8_s_variable_rate_clip_has_16_frames(tmp_path):
    path = tmp_path / "vfr.mp4"
    gaps = random.Random(0)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        audio = container.add_stream("aac", rate=44100, layout="stereo")
        ms, i = 0, 0
        while ms < 8000:  # frames 20 to 100 ms apart; the last one shown past 8.0 s
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), grey_level(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(video.encode(frame))
            ms, i = ms + gaps.choice([20, 33, 50, 100]), i + 1
        container.mux(video.encode())
        write_tone(container, audio, 8.0, 44100)
    clip = prepare.prepare_clip(prepare.Source(path, "vfr", "vfr.mp4"))
    assert clip.meta["frames"] == 16 and len(decode(clip.video)) == 16


# parts, merge, resume
@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """A CSV of 7 short clips (one listed twice) and one broken file."""
    root = tmp_path_factory.mktemp("labeled")
    (root / "v").mkdir()
    rows = ["path,labels"]
    for i in range(7):
        small_clip(root / "v" / f"clip{i}.mp4", 1 + (i % 2) * 0.5)
        rows.append(f"v/clip{i}.mp4,{['dog', 'cat;dog', 'bird'][i % 3]}")
    (root / "v" / "broken.mp4").write_bytes(b"\x00" * 999)
    rows[4:4] = ["v/broken.mp4,cat", "v/clip0.mp4,bird"]
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return root / "clips.csv"


def contents(root: Path) -> dict[str, tuple]:
    """key -> (labels, source, frames, duration, sha256 of the video and audio bytes) of every clip of a shard set."""
    found = {}
    for shard in read_manifest(root)["shards"]:
        for video, audio, meta in read_clips(root, shard):
            found[meta["key"]] = (
                meta["labels"],
                meta["source"],
                meta["frames"],
                meta["duration"],
                hashlib.sha256(video).hexdigest(),
                hashlib.sha256(audio).hexdigest(),
            )
    return found


@pytest.fixture(scope="module")
def whole(labeled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    assert prepare.main([str(labeled), "--out", str(out), "--clips-per-shard", "2", "--workers", "1"]) == 1
    return out


def test_parts_then_merge_equal_one_run(labeled, whole, tmp_path, capsys):
    out = tmp_path / "parts"
    args = [str(labeled), "--out", str(out), "--clips-per-shard", "2", "--workers", "1"]
    for k in (3, 1):
        prepare.main([*args, "--part", f"{k}/3"])
    assert prepare.main(["merge", str(out)]) == 2  # part 2 not run yet
    assert capsys.readouterr().err.strip().endswith(f"part 2/3 is missing: run prepare with --part 2/3 --out {out}")
    prepare.main([*args, "--part", "2/3"])
    assert prepare.main(["merge", str(out)]) == 0
    merged, single = read_manifest(out), read_manifest(whole)
    assert contents(out) == contents(whole) and len(contents(out)) == 7
    assert merged["label_names"] == single["label_names"] == ["bird", "cat", "dog"]
    assert merged["skipped"] == single["skipped"] and merged["merged"] == single["merged"]
    assert merged["shards"][0]["tar"] == "part-1-of-3/shard-000000.tar"
    health = ensure_health(out, workers=1, progress=False)
    assert all(shard.decoded == 0 for shard in health.shards)  # the parts' records, read through the merged manifest
    assert health.usable == 7 and sorted(map(tuple, health.labels())) == sorted(
        tuple(labels) for labels, *_ in contents(whole).values()
    )
    spec = LoaderSpec(batch_size=3, audio_frames=128, video_frames=2, video_size=32, train=False)
    batches = list(Loader(out, spec, device="cpu"))  # DALI reads the parts' shards through the merged manifest
    assert sorted(key for batch in batches for key in batch["key"]) == sorted(contents(whole))


def test_a_run_without_part_into_a_folder_of_parts_is_refused(labeled, tmp_path, capsys):
    prepare.main([str(labeled), "--out", str(tmp_path / "out"), "--workers", "1", "--part", "3/3"])
    assert prepare.main([str(labeled), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert "out: holds the parts of a prepare --part run" in capsys.readouterr().err


def test_merge_refuses_parts_made_with_other_settings(labeled, tmp_path, capsys):
    out = tmp_path / "parts"
    prepare.main([str(labeled), "--out", str(out), "--clips-per-shard", "2", "--workers", "1", "--part", "1/2"])
    prepare.main([str(labeled), "--out", str(out), "--clips-per-shard", "3", "--workers", "1", "--part", "2/2"])
    assert prepare.main(["merge", str(out)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "part 2/2 was made with --clips-per-shard 3, part 1/2 with 2; prepare every part with the same settings"
        )
    )


def test_a_rerun_with_other_settings_is_refused_naming_the_setting(labeled, whole, capsys):
    assert prepare.main([str(labeled), "--out", str(whole), "--clips-per-shard", "3"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{whole}: was prepared with --clips-per-shard 2, this run has 3; rerun with the first settings to resume, "
            f"or give a new --out"
        )
    )
    assert prepare.main([str(labeled), "--out", str(whole), "--clips-per-shard", "2", "--workers", "2"]) == 1
    assert "prepared 7 clips into 4 shards, skipped 1" in capsys.readouterr().out  # a finished run: nothing to do


@pytest.fixture(scope="module")
def many(labeled, tmp_path_factory) -> tuple[Path, Path]:
    """A CSV of 29 files (28 clips and a broken one), and its uninterrupted run with 2 clips per shard."""
    root = labeled.parent
    rows = ["path,labels", *[f"v/clip{i}.mp4,{['dog', 'cat;dog', 'bird'][i % 3]}" for i in range(7)]]
    rows.append("v/broken.mp4,cat")
    for copy in range(1, 4):
        (root / f"v{copy}").mkdir(exist_ok=True)
        for i in range(7):
            os.link(root / "v" / f"clip{i}.mp4", root / f"v{copy}" / f"clip{i}.mp4")
            rows.append(f"v{copy}/clip{i}.mp4,{['bird', 'dog', 'cat'][(i + copy) % 3]}")
    (root / "many.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("many") / "out"
    assert prepare.main([str(root / "many.csv"), "--out", str(out), "--clips-per-shard", "2", "--workers", "1"]) == 1
    return root / "many.csv", out


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and (process_state(int(p.name)) or ("", 0))[1] == pid
    ]


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state[0] not in "ZX"


@pytest.mark.parametrize(
    "stop, status, workers",
    [(signal.SIGKILL, -signal.SIGKILL, 1), (signal.SIGKILL, -signal.SIGKILL, 2), (signal.SIGINT, 130, 1)],
)
def test_a_run_killed_at_a_random_clip_resumes_to_the_same_shards(many, tmp_path, stop, status, workers):
    table, whole = many
    out = tmp_path / "out"
    args = [str(table), "--out", str(out), "--clips-per-shard", "2", "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mavil.data.prepare", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards_done = random.randint(stop == signal.SIGINT, 8)  # of 15 records; then a random fraction of a shard later
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(prepare.read_progress(out)) < shards_done:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))
    pool = children(process.pid)
    process.send_signal(stop)
    assert process.wait() == status  # Ctrl-C: "interrupted; run the same command again to resume", 130
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pool):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pool), "pool workers outlived the run"
    assert not (out / "manifest.json").exists(), "the run finished before it was killed"
    assert prepare.main(args) == 1
    assert contents(out) == contents(whole) and len(contents(out)) == 28
    assert read_manifest(out) == read_manifest(whole) | {"shards": read_manifest(out)["shards"]}
    assert [shard["clips"] for shard in read_manifest(out)["shards"]] == [2] * 14
    records = [json.loads(line)["consumed"] for line in (out / prepare.PROGRESS).read_text().splitlines()]
    assert records == [json.loads(line)["consumed"] for line in (whole / prepare.PROGRESS).read_text().splitlines()]


def test_two_runs_into_one_directory_are_refused(labeled, tmp_path, capsys):
    with prepare.lock(tmp_path / "out"):
        assert prepare.main([str(labeled), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("out: another prepare is writing it (two runs of one --part?)")


def test_a_progress_line_cut_short_by_a_crash_is_dropped_and_its_shard_redone(labeled, whole, tmp_path):
    out = tmp_path / "out"
    args = [str(labeled), "--out", str(out), "--clips-per-shard", "2", "--workers", "1"]
    assert prepare.main(args) == 1
    lines = (out / prepare.PROGRESS).read_text().splitlines()
    (out / prepare.PROGRESS).write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # a crash while appending
    (out / "manifest.json").unlink()
    assert prepare.main(args) == 1
    assert contents(out) == contents(whole)
    assert (out / prepare.PROGRESS).read_text().splitlines() == lines
