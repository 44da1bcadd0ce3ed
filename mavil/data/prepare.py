"""Any folder or CSV of videos -> shards, with PyAV only (FFmpeg's libraries in a wheel, no binary).

    python -m mavil.data.prepare SRC --out DIR [--clips-per-shard 256] [--workers N] [--part K/N]
    python -m mavil.data.prepare segments.csv --class-index class_labels_indices.csv --downloads DIR --out DIR
    python -m mavil.data.prepare vggsound.csv --downloads DIR --split train --out DIR
    python -m mavil.data.prepare merge DIR          # after every --part K/N of DIR has finished

SRC is a folder of videos, a CSV `path,labels`, AudioSet's segment CSV with its class index, or VGGSound's CSV
(`mavil.data.sources`). Each clip becomes 2-fps VP9 video (short side 256) and 16-kHz mono FLAC, decoded back and
recorded beside its shard for `mavil.data.health`. Unusable files are listed in the manifest's "skipped", absent
downloads in missing.txt; the exit status is the number skipped. An interrupted run resumes when rerun with the same
settings. Details (encoding, keys, parts, resume): docs/prepare.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mavil.data.encode import ENCODING, SAMPLE_RATE, SHORT_SIDE, VIDEO_FPS, encode_audio, encode_video
from mavil.data.pool import default_workers, map_in_order
from mavil.data.shards import MANIFEST, ShardWriter, encode_meta, write_manifest
from mavil.data.verify import Bad, clip_facts
from mavil.data.sources import (  # noqa: F401 (MAX_KEY, read_sources, sanitised_keys: the tests')
    FORMATS,
    MAX_KEY,
    Source,
    SourceList,
    read_sources,
    sanitised_keys,
)
from mavil.deps import require
from mavil.files import atomic_write, partial_path

av = require("av")  # PyAV; a missing one is named with its pip requirement and install command

MAX_DURATION = 600.0  # s: longer files are skipped (encode_video holds a clip's frames in memory)
MAX_EXIT_STATUS = 100
END_TOLERANCE = 0.05  # s: an output time this close to the stream's end makes no frame
TIME_EPSILON = 1e-6  # s: timestamps this close count as equal
FULL_VIDEO_SLACK, CUT_SLACK = 0.5, 1.0  # s: see is_full_video
STATE, PROGRESS, MISSING, LOCK = "prepare-state.json", "prepare-progress.jsonl", "missing.txt", ".prepare.lock"
STATE_VERSION = 1
WARNINGS = 20  # warning lines printed before "... and N more"
PROG = "python -m mavil.data.prepare"


@dataclass(frozen=True)
class Clip:
    key: str
    video: bytes  # WebM
    audio: bytes  # FLAC
    meta: dict
    facts: list[int] | None = None  # [sample rate, channels, samples, frames], decoded back from video and audio


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


class Unusable(Exception):
    """A file that cannot become a clip; the message is the reason recorded in the manifest."""


def output_size(width: int, height: int, pixel_aspect: float) -> tuple[int, int]:
    """(width, height) with short side SHORT_SIDE, the display aspect ratio kept, both even."""
    display_width = width * pixel_aspect
    scale = SHORT_SIDE / min(display_width, height)
    even = lambda v: max(2, 2 * round(v * scale / 2))  # noqa: E731
    return even(display_width), even(height)


class FrameSampler:
    """Holds, for each output time i / VIDEO_FPS (seconds from the origin: the first frame, or a segment's start),
    the last frame shown at or before it (the first frame for times before it), converted once, when first picked,
    to upright RGB of the short side SHORT_SIDE."""

    def __init__(self, pixel_aspect: float = 1.0, origin: float | None = None):
        self.picked: list[np.ndarray] = []  # (H, W, 3) uint8 each
        self.origin = origin  # seconds in the file's time; None: the first frame's time
        self.last_time = 0.0  # seconds from the origin
        self.pixel_aspect = pixel_aspect  # width / height of one pixel as displayed
        self.size: tuple[int, int] | None = None  # (width, height) as decoded, scaled; from the first frame
        self.turn: tuple[bool, bool, bool] = (False, False, False)  # see `upright_turn`
        self._last: av.VideoFrame | None = None
        self._last_rgb: np.ndarray | None = None

    def push(self, frame: av.VideoFrame) -> None:
        if frame.time is None:
            raise Unusable("video frame without a timestamp")
        if self.size is None:
            self.origin = frame.time if self.origin is None else self.origin
            self.size = output_size(frame.width, frame.height, self.pixel_aspect)
            self.turn = upright_turn(frame)
        self._hold_until(frame.time - self.origin)
        self._last, self._last_rgb = frame, None
        self.last_time = max(self.last_time, frame.time - self.origin)

    def finish(self, end: float) -> np.ndarray:
        """(T, H, W, 3) uint8: every output time before `end` seconds, less END_TOLERANCE."""
        if self._last is None:
            raise Unusable("no decodable video frames")
        self._hold_until(end - END_TOLERANCE)
        if not self.picked:
            raise Unusable(f"no video frame before {end:.3f} s")
        return np.stack(self.picked)

    def _hold_until(self, t: float) -> None:
        """Picks the held frame for every output time before t (the next frame's time)."""
        while self._last is not None and len(self.picked) / VIDEO_FPS < t - TIME_EPSILON:
            if self._last_rgb is None:
                width, height = self.size
                rgb = self._last.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray()
                self._last_rgb = turned(rgb, self.turn)
            self.picked.append(self._last_rgb)


def upright_turn(frame: av.VideoFrame) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that show a decoded frame as its display matrix says (phones record
    portrait video as landscape frames and a matrix that turns them); no turn without a matrix or for an angle that
    is not a multiple of 90 degrees. The matrix maps a pixel (x, y) to (a x + c y, b x + d y)."""
    matrix = next((data for data in frame.side_data if data.type.name == "DISPLAYMATRIX"), None)
    if matrix is None:
        return False, False, False
    m = np.frombuffer(bytes(matrix), np.int32)[:5] / 65536.0
    a, b, c, d = (round(v) for v in (m[0], m[1], m[3], m[4]))
    if a == d == 0 and abs(b) == abs(c) == 1:  # quarter turns: the output's rows are the input's columns
        return True, b < 0, c < 0
    if b == c == 0 and abs(a) == abs(d) == 1:
        return False, d < 0, a < 0
    return False, False, False


def turned(rgb: np.ndarray, turn: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_columns = turn
    if transpose:
        rgb = rgb.transpose(1, 0, 2)
    if flip_rows:
        rgb = rgb[::-1]
    if flip_columns:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def video_end(stream: av.video.stream.VideoStream, last_time: float) -> float:
    """Seconds from the first frame to the end of the video stream: its duration where the container
    records one, else the last frame's time plus one frame."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return last_time + (1 / float(rate) if rate else 1e-6)


def stream_end(stream: av.video.stream.VideoStream, last_frame: float) -> float:
    """The end of the video stream in the file's time: its start plus its duration where the container records
    them, else the last frame's time plus one frame."""
    if stream.duration and stream.time_base:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return last_frame + (1 / float(rate) if rate else 1e-6)


def is_full_video(file_seconds: float | None, segment: tuple[float, float]) -> bool:
    """Whether a download of `file_seconds` holds the whole video (to be cut to the segment), rather than the
    segment already cut: it lasts at least end - min(0.5 s, start / 2), or more than the segment and 1 s (longer
    than a cut could be). Unknown durations count as whole videos."""
    start, end = segment
    if file_seconds is None:
        return True
    return file_seconds >= end - min(FULL_VIDEO_SLACK, start / 2) or file_seconds > end - start + CUT_SLACK


def decode_clip(
    path: Path, max_duration: float, segment: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(T, H, W, 3) uint8 upright frames at VIDEO_FPS, (samples,) float32 mono waveform at SAMPLE_RATE, duration (s):
    the whole file, or the segment [start, end) seconds of the video (see `is_full_video`)."""
    if path.stat().st_size == 0:
        raise Unusable("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise Unusable(f"not a readable media file: {error}") from None
    with container:
        if not container.streams.video:
            raise Unusable("no video stream")
        if not container.streams.audio:
            raise Unusable("no audio stream")
        video, audio = container.streams.video[0], container.streams.audio[0]
        file_seconds = container.duration / av.time_base if container.duration is not None else None
        origin, length = None, None  # where the clip starts in the file's time (None: its first frame), how long
        if segment is None:
            if file_seconds is not None:
                check_duration(file_seconds, max_duration)
        else:
            length = segment[1] - segment[0]
            check_duration(length, max_duration)
            if is_full_video(file_seconds, segment):
                zero = container.start_time / av.time_base if container.start_time is not None else 0.0
                origin = zero + segment[0]
                if segment[0] > 0:
                    container.seek(int(origin * av.time_base), backward=True)
        sampler = FrameSampler(float(video.sample_aspect_ratio or 1) or 1.0, origin)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks, audio_start = [], None  # (1, n) float32 arrays; time of the first audio frame
        video_past, audio_past = False, False  # a frame at or after the clip's end came
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                stop = None if length is None or sampler.origin is None else sampler.origin + length
                if packet.stream.type == "video":
                    video_past = video_past or (stop is not None and frame.time is not None and frame.time >= stop)
                    if not video_past:
                        sampler.push(frame)
                        check_duration(sampler.last_time, max_duration)
                elif stop is not None and frame.time is not None and frame.time >= stop:
                    audio_past = True
                else:
                    audio_start = frame.time if audio_start is None else audio_start
                    chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            if video_past and audio_past:
                break
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        if sampler.origin is None:
            raise Unusable(
                "no decodable video frames"
                if segment is None
                else f"no video frame in the segment [{segment[0]:g}, {segment[1]:g}) s of a "
                f"{file_seconds or 0:.1f}-s file"
            )
        if length is None:
            end = video_end(video, sampler.last_time)
        else:  # the video ends at the cut, or earlier
            end = (
                length
                if video_past
                else min(length, stream_end(video, sampler.origin + sampler.last_time) - sampler.origin)
            )
        frames = sampler.finish(end)
    waveform = aligned_waveform(chunks, audio_start, sampler.origin)
    if length is not None:
        waveform = waveform[: round(length * SAMPLE_RATE)]
    return frames, waveform, end


def check_duration(seconds: float, max_duration: float) -> None:
    if seconds > max_duration:
        raise Unusable(f"longer than --max-duration {max_duration:g} s ({seconds:.0f} s or more)")


def aligned_waveform(chunks: list[np.ndarray], audio_start: float | None, video_start: float) -> np.ndarray:
    """(samples,) float32: the audio from the first video frame on (zeros where it starts later)."""
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise Unusable("no decodable audio samples")
    waveform = np.concatenate([c.reshape(-1) for c in chunks])
    shift = round(((audio_start or 0.0) - video_start) * SAMPLE_RATE)  # > 0: audio starts after the video
    if shift > 0:
        return np.concatenate([np.zeros(shift, np.float32), waveform])
    return waveform[-shift:]


def prepare_clip(source: Source, max_duration: float = MAX_DURATION) -> Clip | Skipped:
    """One source file -> an encoded clip, or the reason it was skipped. Runs in the workers."""
    try:
        frames, waveform, duration = decode_clip(source.path, max_duration, source.segment)
        meta = {"labels": source.labels, "duration": round(duration, 3), "frames": len(frames), "source": source.name}
        encode_meta({**meta, "key": source.key})  # too long metadata is this clip's problem, not the run's
        video, audio = encode_video(frames), encode_audio(waveform)
        return Clip(source.key, video, audio, meta, clip_facts(video, audio))  # verified here, trusted by health
    except Bad as bad:
        return Skipped(source.name, f"the encoded clip does not decode back: {bad.args[0]}: {bad.args[1]}")
    except Unusable as error:
        return Skipped(source.name, str(error))
    except FileNotFoundError:
        return Skipped(source.name, "file not found")
    except Exception as error:  # noqa: BLE001 -- a bad file must not end the run; its reason is recorded
        return Skipped(source.name, f"decoding failed: {type(error).__name__}: {error}")


# the run: parts, state, resume
class PrepareError(ValueError):
    """A run that cannot start or go on as asked; one line naming what to change."""


@dataclass(frozen=True)
class Summary:
    clips: int
    shards: int
    skipped: list[dict]
    missing: list[str] = field(default_factory=list)  # sources whose download is not there
    out: Path | None = None  # the directory that holds the manifest


SETTING_NAMES = {
    "format": "--format",
    "sources": "the source list (SRC, --class-index, --split)",
    "clips_per_shard": "--clips-per-shard",
    "max_duration": "--max-duration",
    "part": "--part",
    "encoding": "the encoding (another version of prepare)",
    "version": "the state format",
}


def parse_part(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N; None -> None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise PrepareError(f"--part must be K/N with 1 <= K <= N (e.g. 2/8), not {text!r}")
    return int(match[1]), int(match[2])


def part_dir(k: int, n: int) -> str:
    return f"part-{k}-of-{n}"


def part_of(sources: list, part: tuple[int, int] | None) -> list:
    """Part K of N: the K-th of N contiguous runs of the sources, as equal as can be (deterministic, no
    coordination needed)."""
    if part is None:
        return sources
    k, n = part
    return sources[(k - 1) * len(sources) // n : k * len(sources) // n]


def check_settings(clips_per_shard: int, workers: int, max_duration: float) -> None:
    if not (isinstance(clips_per_shard, int) and clips_per_shard >= 1):
        raise PrepareError(f"--clips-per-shard must be a whole number of at least 1, not {clips_per_shard}")
    if not (isinstance(workers, int) and workers >= 1):
        raise PrepareError(f"--workers must be a whole number of at least 1, not {workers}")
    if not 0 < max_duration < float("inf"):
        raise PrepareError(f"--max-duration must be a positive number of seconds, not {max_duration:g}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PrepareError(f"{path}: unreadable ({error}); give a new --out") from None


def differing_setting(recorded: dict, settings: dict) -> str | None:
    for name in SETTING_NAMES:
        if recorded.get(name) != settings.get(name):
            return name
    return None


def describe(name: str, value) -> str:
    if name == "sources" and isinstance(value, dict):
        return f"{value['count']} sources (sha256 {value['sha256'][:12]})"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)


def open_state(target: Path, settings: dict) -> list[dict]:
    """The progress records of an earlier run of these settings in `target` (none for a new directory); refuses a
    directory of something else or of other settings, naming the first setting that differs."""
    state = target / STATE
    if any(path.name not in (LOCK, partial_path(state).name) for path in target.iterdir()):
        if not state.is_file() and any(target.glob("part-*-of-*")):
            raise PrepareError(
                f"{target}: holds the parts of a prepare --part run; run it with --part K/N, merge it "
                f"with {PROG} merge {target}, or give a new directory"
            )
        if not state.is_file():
            raise PrepareError(f"{target}: not empty and not made by prepare; give a new directory")
        recorded = read_json(state).get("settings", {})
        name = differing_setting(recorded, settings)
        if name is not None:
            raise PrepareError(
                f"{target}: was prepared with {SETTING_NAMES[name]} {describe(name, recorded.get(name))}"
                f", this run has {describe(name, settings.get(name))}; rerun with the first settings to "
                f"resume, or give a new --out"
            )
        records = read_progress(target)  # rewritten without a line a crash cut short, so that appends follow
        atomic_write(target / PROGRESS, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        return records
    atomic_write(state, json.dumps({"settings": settings}, indent=1) + "\n")
    return []


def lock(target: Path):
    """Makes `target` and holds an exclusive lock on it for this process's life (returns the open lock file);
    refuses a directory another prepare is writing."""
    if target.exists() and not target.is_dir():
        raise PrepareError(f"{target}: exists and is not a directory; give a directory for --out")
    target.mkdir(parents=True, exist_ok=True)
    handle = open(target / LOCK, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise PrepareError(f"{target}: another prepare is writing it (two runs of one --part?)") from None
    return handle


def read_progress(target: Path) -> list[dict]:
    """The records of PROGRESS: one per finished shard (and one at the end); a last line cut by a crash is dropped."""
    path = target / PROGRESS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint(target: Path, shard: dict | None, consumed: int, skipped: list[dict], missing: list[str]) -> None:
    """Records that the first `consumed` sources of the part are done: `shard` (complete on disk) holds their clips
    since the last record, `skipped` and `missing` the others."""
    if shard is not None:
        for name in shard_files(shard):
            sync(target / name)
    record = {"shard": shard, "consumed": consumed, "skipped": skipped, "missing": missing}
    with open(target / PROGRESS, "a") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def shard_files(shard: dict) -> list[str]:
    """A shard's files: tar, index and, where prepare verified its clips, the sidecar recording it."""
    return [shard["tar"], shard["index"], *([shard["verified"]] if shard.get("verified") else [])]


def remove_unrecorded_shards(target: Path, shards: list[dict]) -> None:
    """Deletes shard files no record names: the one an interrupted run was writing."""
    recorded = {name for shard in shards for name in shard_files(shard)}
    for path in target.glob("shard-*"):
        if path.name not in recorded:
            path.unlink()


def prepare(
    src: str | Path,
    out: str | Path,
    clips_per_shard: int = 256,
    workers: int = 1,
    max_duration: float = MAX_DURATION,
    progress: bool = True,
    fmt: str | None = None,
    downloads: str | Path | None = None,
    class_index: str | Path | None = None,
    split: str | None = None,
    part: tuple[int, int] | str | None = None,
) -> Summary:
    """Writes the shards of every usable source of `src` (of part K/N: into out/part-K-of-N) and the manifest.
    An interrupted run resumes when run again with the same settings: its finished shards are kept."""
    check_settings(clips_per_shard, workers, max_duration)
    part = parse_part(part) if isinstance(part, str) else part
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out}: exists and is not a directory; give a directory for --out")
    if part is not None and (out / STATE).is_file():
        raise PrepareError(f"{out}: holds a prepare run without --part; give another --out")
    listing = read_sources(
        Path(src), fmt, Path(downloads) if downloads else None, Path(class_index) if class_index else None, split
    )
    if all(source.path is None for source in listing.sources):
        raise PrepareError(f"{downloads}: none of the {len(listing.sources)} segments of {src} has a download there")
    for line in listing.warnings[:WARNINGS]:
        tqdm.write(f"warning: {line}", file=sys.stderr)
    if len(listing.warnings) > WARNINGS:
        tqdm.write(f"warning: ... and {len(listing.warnings) - WARNINGS} more like these", file=sys.stderr)
    sources = part_of(listing.sources, part)
    target = out / part_dir(*part) if part else out
    settings = {
        "version": STATE_VERSION,
        "format": listing.format,
        "sources": {"count": len(listing.sources), "sha256": listing.fingerprint()},
        "clips_per_shard": clips_per_shard,
        "max_duration": float(max_duration),
        "part": None if part is None else f"{part[0]}/{part[1]}",
        "encoding": ENCODING,
    }
    with lock(target):  # held until the manifest is written
        records = open_state(target, settings)
        shards = [r["shard"] for r in records if r["shard"]]
        skipped = [entry for r in records for entry in r["skipped"]]
        missing = [name for r in records for name in r["missing"]]
        consumed = records[-1]["consumed"] if records else 0
        remove_unrecorded_shards(target, shards)
        if consumed < len(sources) or not records:
            shards += write_shards(
                target,
                sources,
                consumed,
                len(shards),
                clips_per_shard,
                workers,
                max_duration,
                progress,
                skipped,
                missing,
            )
        if missing:
            (target / MISSING).write_text("".join(f"{name}\n" for name in missing))
        write_manifest(target, shards, listing.label_names, ENCODING, skipped, **manifest_extra(listing, missing, part))
        return Summary(sum(s["clips"] for s in shards), len(shards), skipped, missing, target)


def manifest_extra(listing: SourceList, missing: list[str], part: tuple[int, int] | None) -> dict:
    extra = {"label_ids": listing.label_ids} if listing.label_ids else {}
    if listing.format in ("audioset", "vggsound"):
        extra["missing"] = len(missing)
    if listing.merged:
        extra["merged"] = listing.merged
    if part is not None:
        extra["part"] = f"{part[0]}/{part[1]}"
    return extra


def write_shards(
    target: Path,
    sources: list[Source],
    consumed: int,
    first_shard: int,
    clips_per_shard: int,
    workers: int,
    max_duration: float,
    progress: bool,
    skipped: list[dict],
    missing: list[str],
) -> list[dict]:
    """Prepares sources[consumed:] into shards numbered from first_shard, recording each finished shard; appends to
    `skipped` and `missing`; returns the new shards."""
    todo = sources[consumed:]
    results = map_in_order(
        partial(prepare_clip, max_duration=max_duration),
        [s for s in todo if s.path is not None],
        workers,
        "prepare",
        progress,
    )
    writer, new_skipped, new_missing = ShardWriter(target, clips_per_shard, first_shard), [], []
    for number, source in enumerate(todo, start=consumed + 1):
        if source.path is None:
            new_missing.append(source.name)
            continue
        result = next(results)
        if isinstance(result, Skipped):
            new_skipped.append({"source": result.source, "reason": result.reason})
            tqdm.write(f"skipped {result.source}: {result.reason}", file=sys.stderr)
            continue
        writer.add(result.key, result.video, "webm", result.audio, result.meta, result.facts)
        if writer.full:
            checkpoint(target, writer.finish_shard(), number, new_skipped, new_missing)
            skipped += new_skipped
            missing += new_missing
            new_skipped, new_missing = [], []
    next(results, None)  # ends the generator (and its pool)
    checkpoint(target, writer.finish_shard(), len(sources), new_skipped, new_missing)
    skipped += new_skipped
    missing += new_missing
    return writer.shards


# merging parts
def merge(out: str | Path) -> Summary:
    """Writes out/manifest.json over every part out/part-K-of-N; refuses a missing or unfinished part, or parts
    made with other settings."""
    out = Path(out)
    found = sorted(
        (int(m[1]), int(m[2]))
        for d in (out.iterdir() if out.is_dir() else [])
        if (m := re.fullmatch(r"part-(\d+)-of-(\d+)", d.name)) and d.is_dir()
    )
    if not found:
        raise PrepareError(f"{out}: no part-K-of-N folders (made by prepare --part K/N --out {out})")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise PrepareError(f"{out}: holds parts of {' and of '.join(map(str, counts))}; keep the parts of one split")
    n = counts[0]
    first_settings, shards, skipped, missing, manifest = None, [], [], [], None
    for k in range(1, n + 1):
        folder = out / part_dir(k, n)
        if not folder.is_dir():
            raise PrepareError(f"{out}: part {k}/{n} is missing: run prepare with --part {k}/{n} --out {out}")
        if not (folder / MANIFEST).is_file() or not (folder / STATE).is_file():
            raise PrepareError(f"{out}: part {k}/{n} is not finished: rerun its prepare (same arguments) to resume")
        settings = {**read_json(folder / STATE)["settings"], "part": None}
        first_settings = first_settings or settings
        name = differing_setting(first_settings, settings)
        if name is not None:
            raise PrepareError(
                f"{out}: part {k}/{n} was made with {SETTING_NAMES[name]} "
                f"{describe(name, settings.get(name))}, part 1/{n} with "
                f"{describe(name, first_settings.get(name))}; prepare every part with the same settings"
            )
        manifest = read_json(folder / MANIFEST)
        shards += [
            {**s, **{name: f"{folder.name}/{s[name]}" for name in ("tar", "index", "verified") if name in s}}
            for s in manifest["shards"]
        ]
        skipped += manifest["skipped"]
        if (folder / MISSING).is_file():
            missing += (folder / MISSING).read_text().splitlines()
    if missing:
        (out / MISSING).write_text("".join(f"{name}\n" for name in missing))
    extra = {key: manifest[key] for key in ("label_ids", "merged") if key in manifest}
    if "missing" in manifest:
        extra["missing"] = len(missing)
    write_manifest(out, shards, manifest["label_names"], manifest["encoding"], skipped, **extra)
    return Summary(sum(s["clips"] for s in shards), len(shards), skipped, missing, out)


def summary_lines(summary: Summary) -> list[str]:
    lines = [
        f"prepared {summary.clips} clips into {summary.shards} shards, skipped {len(summary.skipped)} (see {MANIFEST})"
    ]
    if summary.missing:
        lines.append(f"{len(summary.missing)} sources have no download (listed in {summary.out / MISSING})")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=f"Exit status: 0 when every file became a clip; otherwise the number of skipped files, at most "
        f'{MAX_EXIT_STATUS} (the files and their reasons are in the manifest\'s "skipped"; missing downloads '
        f"are listed in {MISSING}, not counted). A run that cannot start (bad arguments or sources, --out of "
        f"something else or of other settings) exits with 2 and one line naming the problem; an interrupted "
        f"run (Ctrl-C: 130) resumes when run again with the same arguments. After every --part K/N has "
        f"finished: {PROG} merge OUT.",
    )
    parser.add_argument("src", type=Path, help="a folder of videos, or a CSV (path,labels; AudioSet's; VGGSound's)")
    parser.add_argument(
        "--out", required=True, type=Path, help="new directory for the shards, or the one of a run to resume"
    )
    parser.add_argument("--format", choices=FORMATS, default=None, help="how to read SRC (default: detected)")
    parser.add_argument("--downloads", type=Path, help="AudioSet/VGGSound: the folder of videos named by YTID")
    parser.add_argument("--class-index", type=Path, help="AudioSet's class_labels_indices.csv (label names, order)")
    parser.add_argument("--split", help="VGGSound: keep the rows of this split (train or test)")
    parser.add_argument("--part", help="K/N: prepare the K-th of N parts of the sources into OUT/part-K-of-N")
    parser.add_argument("--clips-per-shard", type=int, default=256)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes (default: the CPUs available); 1 decodes in this process",
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=MAX_DURATION,
        help=f"seconds; longer files are skipped (default {MAX_DURATION:g})",
    )
    args = parser.parse_args(argv)
    try:
        summary = prepare(
            args.src,
            args.out,
            args.clips_per_shard,
            args.workers,
            args.max_duration,
            True,
            args.format,
            args.downloads,
            args.class_index,
            args.split,
            args.part,
        )
    except (ValueError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(summary)))
    return min(len(summary.skipped), MAX_EXIT_STATUS)


def merge_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} merge", description="One manifest for every part of OUT.")
    parser.add_argument("out", type=Path, help="the --out of the prepare --part K/N runs")
    args = parser.parse_args(argv)
    try:
        summary = merge(args.out)
    except (ValueError, OSError) as error:
        print(f"{PROG} merge: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
