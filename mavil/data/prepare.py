"""Any folder or CSV of videos -> shards, with PyAV only (FFmpeg's libraries in a wheel, no binary).

    python -m mavil.data.prepare SRC --out DIR [--clips-per-shard 256] [--workers N]

SRC is a folder (every file below it whose name does not start with '.', recursively, in sorted
order; no labels) or a CSV file with columns `path,labels`: paths relative to the CSV's folder or
absolute, labels as class names separated by ';', numbered in sorted order (the manifest's label_names).

Per file: the video is sampled at 2 fps by taking, for each time i/2 s from the first frame to the
end of the stream, the last frame shown at or before it; resized to short side 256 keeping the aspect
ratio (even width and height) and encoded as VP9. The audio is downmixed to mono, resampled to 16 kHz,
aligned to the first video frame (padded or cut at the start) and encoded as FLAC. A clip's key is its
path below SRC (or as written in the CSV) without the extension, every character other than letters,
digits, '-' and '_' replaced by '_', made unique with a suffix -2, -3, ...

Files that cannot be used (empty, not decodable, no video or no audio stream, longer than
--max-duration) are skipped and listed in the manifest's "skipped" with the reason.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from mavil.data.encode import ENCODING, SAMPLE_RATE, SHORT_SIDE, VIDEO_FPS, encode_audio, encode_video
from mavil.data.shards import MANIFEST, ShardWriter, encode_meta, write_manifest
from mavil.deps import require

av = require("av")  # PyAV; a missing one is named with its pip requirement and install command

MAX_DURATION = 600.0  # s: longer files are skipped (encode_video holds a clip's frames in memory)
MAX_EXIT_STATUS = 100
IN_FLIGHT_PER_WORKER = 4  # clips submitted ahead of the one the writer waits for
MAX_KEY = 80  # characters: a tar member name (key + extension) must fit USTAR's 100


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_order(fn: Callable, items: Iterable, workers: int, desc: str, progress: bool = True) -> Iterator:
    """fn(item) for each item, in the items' order, computed by `workers` spawned processes (in this
    process when workers <= 1), with a progress bar on stderr. At most a few results wait in memory."""
    items = list(items)
    with tqdm(total=len(items), desc=desc, unit="clip", file=sys.stderr, disable=not progress) as bar:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            pending = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    yield pending.popleft().result()
                    bar.update()
            while pending:
                yield pending.popleft().result()
                bar.update()


@dataclass(frozen=True)
class Source:
    path: Path
    key: str
    name: str  # the path as the user gave it: below SRC, or as written in the CSV
    labels: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Clip:
    key: str
    video: bytes  # WebM
    audio: bytes  # FLAC
    meta: dict


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


class Unusable(Exception):
    """A file that cannot become a clip; the message is the reason recorded in the manifest."""


def sanitised_keys(names: list[str]) -> list[str]:
    """One unique shard key per name: the extension dropped, runs of characters other than [A-Za-z0-9_-]
    replaced by '_', the last MAX_KEY characters kept."""
    keys, used = [], set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", str(Path(name).with_suffix("")))[-MAX_KEY:].strip("_-") or "clip"
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def folder_sources(root: Path) -> list[Source]:
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return [Source(root / name, key, name) for name, key in zip(names, sanitised_keys(names))]


def below_common_folder(paths: list[Path]) -> list[str]:
    """Each path relative to the deepest folder that holds them all (a CSV's absolute paths -> short keys)."""
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    return [os.path.relpath(p, common) for p in absolute]


def csv_sources(table: Path) -> tuple[list[Source], list[str]]:
    """The CSV's rows as sources, and the sorted class names their labels index."""
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"path", "labels"} <= set(rows[0]):
        raise ValueError(f"{table}: needs the columns path,labels; has {','.join(rows[0])}")
    names = [row["path"].strip() for row in rows]
    row_labels = [sorted({n.strip() for n in (row["labels"] or "").split(";") if n.strip()}) for row in rows]
    label_names = sorted({n for labels in row_labels for n in labels})
    index = {name: i for i, name in enumerate(label_names)}
    paths = [table.parent / name for name in names]  # absolute names stay absolute
    keys = sanitised_keys(below_common_folder(paths))
    sources = [Source(path, key, name, [index[n] for n in labels])
               for path, key, name, labels in zip(paths, keys, names, row_labels)]
    return sources, label_names


def read_sources(src: Path) -> tuple[list[Source], list[str]]:
    if src.is_dir():
        return folder_sources(src), []
    if src.is_file() and src.suffix.lower() == ".csv":
        return csv_sources(src)
    raise ValueError(f"{src}: neither a folder of videos nor a .csv file")


def output_size(width: int, height: int, pixel_aspect: float) -> tuple[int, int]:
    """(width, height) with short side SHORT_SIDE, the display aspect ratio kept, both even."""
    display_width = width * pixel_aspect
    scale = SHORT_SIDE / min(display_width, height)
    even = lambda v: max(2, 2 * round(v * scale / 2))  # noqa: E731
    return even(display_width), even(height)


class FrameSampler:
    """Holds, for each output time i / VIDEO_FPS (seconds from the first frame), the last frame shown at
    or before it, converted once, when first picked, to RGB of the short side SHORT_SIDE."""

    def __init__(self, pixel_aspect: float = 1.0):
        self.picked: list[np.ndarray] = []  # (H, W, 3) uint8 each
        self.origin: float | None = None  # time of the first frame
        self.last_time = 0.0  # seconds from the first frame
        self.pixel_aspect = pixel_aspect  # width / height of one pixel as displayed
        self.size: tuple[int, int] | None = None  # output (width, height), from the first frame
        self._last: av.VideoFrame | None = None
        self._last_rgb: np.ndarray | None = None

    def push(self, frame: av.VideoFrame) -> None:
        if frame.time is None:
            raise Unusable("video frame without a timestamp")
        if self.origin is None:
            self.origin, self.size = frame.time, output_size(frame.width, frame.height, self.pixel_aspect)
        self._hold_until(frame.time - self.origin)
        self._last, self._last_rgb = frame, None
        self.last_time = max(self.last_time, frame.time - self.origin)

    def finish(self, end: float) -> np.ndarray:
        """(T, H, W, 3) uint8: every output time before `end` seconds."""
        if self._last is None:
            raise Unusable("no decodable video frames")
        self._hold_until(end)
        return np.stack(self.picked)

    def _hold_until(self, t: float) -> None:
        """Picks the held frame for every output time before t (the next frame's time)."""
        while self._last is not None and len(self.picked) / VIDEO_FPS < t:
            if self._last_rgb is None:
                width, height = self.size
                self._last_rgb = self._last.reformat(width, height, "rgb24", interpolation="AREA").to_ndarray()
            self.picked.append(self._last_rgb)


def video_end(stream: av.video.stream.VideoStream, last_time: float) -> float:
    """Seconds from the first frame to the end of the video stream: its duration where the container
    records one, else the last frame's time plus one frame."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return last_time + (1 / float(rate) if rate else 1e-6)


def decode_clip(path: Path, max_duration: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(T, H, W, 3) uint8 frames at VIDEO_FPS, (samples,) float32 mono waveform at SAMPLE_RATE, duration (s)."""
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
        if container.duration is not None:
            check_duration(container.duration / av.time_base, max_duration)
        sampler = FrameSampler(float(video.sample_aspect_ratio or 1) or 1.0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks, audio_start = [], None  # (1, n) float32 arrays; time of the first audio frame
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if packet.stream.type == "video":
                    sampler.push(frame)
                    check_duration(sampler.last_time, max_duration)
                else:
                    audio_start = frame.time if audio_start is None else audio_start
                    chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        end = video_end(video, sampler.last_time)
        frames = sampler.finish(end)
    return frames, aligned_waveform(chunks, audio_start, sampler.origin), end


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
        frames, waveform, duration = decode_clip(source.path, max_duration)
        meta = {"labels": source.labels, "duration": round(duration, 3), "frames": len(frames),
                "source": source.name}
        encode_meta({**meta, "key": source.key})  # too long metadata is this clip's problem, not the run's
        return Clip(source.key, encode_video(frames), encode_audio(waveform), meta)
    except Unusable as error:
        return Skipped(source.name, str(error))
    except FileNotFoundError:
        return Skipped(source.name, "file not found")
    except Exception as error:  # noqa: BLE001 -- a bad file must not end the run; its reason is recorded
        return Skipped(source.name, f"decoding failed: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class Summary:
    clips: int
    shards: int
    skipped: list[dict]


def prepare(src: str | Path, out: str | Path, clips_per_shard: int = 256, workers: int = 1,
            max_duration: float = MAX_DURATION, progress: bool = True) -> Summary:
    """Writes the shards of every usable file of `src` and the manifest into `out` (absent or empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; give a new directory")
    sources, label_names = read_sources(Path(src))
    writer, skipped = ShardWriter(out, clips_per_shard), []
    for result in map_in_order(partial(prepare_clip, max_duration=max_duration), sources, workers, "prepare",
                               progress):
        if isinstance(result, Skipped):
            skipped.append({"source": result.source, "reason": result.reason})
            tqdm.write(f"skipped {result.source}: {result.reason}", file=sys.stderr)
        else:
            writer.add(result.key, result.video, "webm", result.audio, result.meta)
    shards = writer.close()
    write_manifest(out, shards, label_names, ENCODING, skipped)
    return Summary(sum(s["clips"] for s in shards), len(shards), skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mavil.data.prepare", description=__doc__.split("\n\n")[0],
        epilog=f"Exit status: 0 when every file became a clip; otherwise the number of skipped files, at most "
               f"{MAX_EXIT_STATUS} (the files and their reasons are in the manifest's \"skipped\"). A run that "
               f"cannot start (bad arguments, SRC neither a folder nor a .csv, --out not empty) exits with 2 "
               f"and writes no manifest.")
    parser.add_argument("src", type=Path, help="a folder of video files, or a CSV with columns path,labels")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) directory for the shards")
    parser.add_argument("--clips-per-shard", type=int, default=256)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes (default: the CPUs available); 1 decodes in this process")
    parser.add_argument("--max-duration", type=float, default=MAX_DURATION,
                        help=f"seconds; longer files are skipped (default {MAX_DURATION:g})")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.src, args.out, args.clips_per_shard, args.workers, args.max_duration)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f"prepared {summary.clips} clips into {summary.shards} shards, skipped {len(summary.skipped)} "
          f"(see {MANIFEST})")
    return min(len(summary.skipped), MAX_EXIT_STATUS)


if __name__ == "__main__":
    sys.exit(main())
