"""The embedded default dataset: K classes of audio-video clips generated locally, no download.

A class fixes the tone and the object; each clip draws its own events, where its sound's onsets and its object's
jumps coincide, so clip-level retrieval is learnable. Clip i has class i mod K; its bytes depend on (seed, i) only.
Details: docs/data.md#the-synthetic-set.

    python -m mavil.data.synthetic --out DIR --clips 1024 --classes 8 --seed 0 [--duration 10]

`ensure_synthetic` generates a set once into a cache directory and reuses it; the engines call it
when a config names no data.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from mavil.data.encode import ENCODING, SAMPLE_RATE, SHORT_SIDE, VIDEO_FPS, encode_audio, encode_video
from mavil.data.pool import default_workers, map_in_order
from mavil.data.shards import MANIFEST, ShardWriter, default_cache_dir, write_manifest

FRAME_WIDTH = 320  # frames are SHORT_SIDE x FRAME_WIDTH (256 x 320)
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "ellipse", "saltire")
GOLDEN = (5**0.5 - 1) / 2  # steps of the golden ratio spread any number of classes evenly over [0, 1)
F0_LOWEST, F0_OCTAVES = 110.0, 4  # fundamentals from 110 Hz to 1760 Hz
HARMONICS = 8
HIGHEST_PARTIAL = 7500.0  # Hz: partials above are dropped (below the 8 kHz Nyquist frequency)
ONSETS_PER_SECOND = (0.3, 0.8)
ATTACK = 0.01  # s
SUSTAIN = 0.1  # level an event decays to, relative to its peak
AUDIO_PEAK = 0.8
OBJECT_RADIUS = (24, 40)  # px
FLASH = 0.6  # how far a flashing object is lightened towards white
MAX_DURATION = 120  # s: longer clips' onsets would not fit the 1024-byte clip metadata
CLASS_STREAM, CLIP_STREAM = 1, 2  # keep the class and the clip random streams apart


@dataclass(frozen=True)
class ClassStyle:
    f0: float  # Hz
    harmonics: tuple[float, ...]  # weight of partial h*f0, h = 1..HARMONICS (0 above HIGHEST_PARTIAL)
    decay: float  # s, time constant of an event's decay towards SUSTAIN
    shape: str
    rgb: tuple[int, int, int]


def class_style(k: int) -> ClassStyle:
    """The sound and the look of class k; the same for every seed and every number of classes."""
    rng = np.random.default_rng([CLASS_STREAM, k])
    f0 = F0_LOWEST * 2 ** (F0_OCTAVES * ((k * GOLDEN) % 1.0))
    weights = rng.uniform(0.0, 1.0, HARMONICS) ** 2
    weights[0] = 1.0
    weights[f0 * np.arange(1, HARMONICS + 1) > HIGHEST_PARTIAL] = 0.0
    group, shape = divmod(k, len(SHAPES))  # classes of one shape get hues far apart
    hue = (group * GOLDEN + shape / len(SHAPES)) % 1.0
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    return ClassStyle(f0, tuple(weights.tolist()), float(rng.uniform(0.08, 0.25)), SHAPES[shape], rgb)


def onset_frames(rng: np.random.Generator, frames: int, fps: int = VIDEO_FPS) -> np.ndarray:
    """(E,) sorted frame indices in [1, frames) at which an event starts: 0.3 to 0.8 per second."""
    duration = frames / fps
    fewest = max(1, round(ONSETS_PER_SECOND[0] * duration))
    most = min(frames - 1, max(fewest, round(ONSETS_PER_SECOND[1] * duration)))
    count = int(rng.integers(fewest, most + 1))
    return np.sort(rng.choice(np.arange(1, frames), size=count, replace=False))


def event_envelope(onsets: np.ndarray, amplitudes: np.ndarray, decay: float, samples: int) -> np.ndarray:
    """(samples,) gain: at each onset a linear attack, then a decay towards SUSTAIN; the loudest event wins."""
    envelope = np.zeros(samples)
    for onset, amplitude in zip(onsets, amplitudes):
        tau = np.arange(samples - onset) / SAMPLE_RATE  # s since this onset
        event = amplitude * np.minimum(tau / ATTACK, 1.0) * (SUSTAIN + (1 - SUSTAIN) * np.exp(-tau / decay))
        np.maximum(envelope[onset:], event, out=envelope[onset:])
    return envelope


def synthesize_audio(style: ClassStyle, onsets: np.ndarray, rng: np.random.Generator, duration: int) -> np.ndarray:
    """(duration * SAMPLE_RATE,) float32 in [-1, 1]: the class tone gated by the events, plus faint noise."""
    samples = duration * SAMPLE_RATE
    t = np.arange(samples) / SAMPLE_RATE
    phases = rng.uniform(0, 2 * np.pi, HARMONICS)
    tone = sum(
        w * np.sin(2 * np.pi * h * style.f0 * t + p)
        for h, (w, p) in enumerate(zip(style.harmonics, phases), start=1)
        if w > 0
    )
    tone /= np.abs(tone).max()
    amplitudes = rng.uniform(0.5, 1.0, len(onsets))
    envelope = event_envelope(onsets, amplitudes, style.decay, samples)
    noise = rng.uniform(0.002, 0.01) * rng.standard_normal(samples)
    return np.clip(AUDIO_PEAK * envelope * tone + noise, -1.0, 1.0).astype(np.float32)


def shape_mask(shape: str, radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool: the shape inscribed in a square of side 2r+1."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1] / radius  # in [-1, 1], y down
    masks = {
        "disc": x**2 + y**2 <= 1,
        "square": np.maximum(abs(x), abs(y)) <= 0.8,
        "triangle": (y <= 0.8) & (abs(x) <= (y + 1) / 1.8),
        "cross": (abs(x) <= 0.3) | (abs(y) <= 0.3),
        "ring": (x**2 + y**2 <= 1) & (x**2 + y**2 >= 0.55**2),
        "diamond": abs(x) + abs(y) <= 1,
        "ellipse": x**2 + (y / 0.5) ** 2 <= 1,
        "saltire": (np.maximum(abs(x), abs(y)) <= 0.8) & ((abs(x - y) <= 0.4) | (abs(x + y) <= 0.4)),
    }
    return masks[shape]


def object_positions(rng: np.random.Generator, count: int, radius: int, height: int, width: int) -> np.ndarray:
    """(count, 2) integer (y, x) centres inside the frame, each far enough from the previous one that
    the shape does not overlap its last place."""
    low, high = radius + 4, np.array([height, width]) - radius - 4
    positions = [rng.integers(low, high)]
    while len(positions) < count:
        for _ in range(64):  # a bounded search keeps it deterministic; the last candidate stands if none is far
            candidate = rng.integers(low, high)
            if np.hypot(*(candidate - positions[-1])) >= 2 * radius + 4:
                break
        positions.append(candidate)
    return np.stack(positions)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float: a dark, muted colour with two faint gratings as texture."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4))) * 255
    y, x = np.mgrid[0:height, 0:width]
    texture = sum(
        6 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
        for fy, fx, phase in rng.uniform([-0.05, -0.05, 0], [0.05, 0.05, 2 * np.pi], (2, 3))
    )
    return base + texture[..., None]


def render_video(
    style: ClassStyle,
    onsets: np.ndarray,
    rng: np.random.Generator,
    frames: int,
    height: int = SHORT_SIDE,
    width: int = FRAME_WIDTH,
) -> np.ndarray:
    """(frames, H, W, 3) uint8: the class object on the clip's background, moving and flashing at each onset."""
    radius = int(rng.integers(*OBJECT_RADIUS))
    mask = shape_mask(style.shape, radius)  # (2r+1, 2r+1)
    positions = object_positions(rng, len(onsets) + 1, radius, height, width)  # one place before each event
    scene = np.clip(background(rng, height, width), 0, 255).astype(np.uint8)
    colour = np.array(style.rgb, dtype=np.uint8)
    flash = np.round(colour + FLASH * (255.0 - colour)).astype(np.uint8)
    flashing = set(onsets.tolist())
    video = np.repeat(scene[None], frames, axis=0)
    for i, frame in enumerate(video):
        (y, x) = positions[np.searchsorted(onsets, i, side="right")]  # the place after the events so far
        patch = frame[y - radius : y + radius + 1, x - radius : x + radius + 1]
        patch[mask] = flash if i in flashing else colour
    return video


def make_clip(index: int, classes: int, seed: int, duration: int) -> tuple[str, bytes, bytes, dict]:
    """Clip `index` of the set: (key, WebM bytes, FLAC bytes, metadata). Runs in the workers."""
    label = index % classes
    style = class_style(label)
    rng = np.random.default_rng([CLIP_STREAM, seed, index])
    frames = duration * VIDEO_FPS
    onsets = onset_frames(rng, frames)  # (E,) frame indices
    waveform = synthesize_audio(style, onsets * (SAMPLE_RATE // VIDEO_FPS), rng, duration)
    video = render_video(style, onsets, rng, frames)
    meta = {
        "labels": [label],
        "duration": duration,
        "frames": frames,
        "source": "synthetic",
        "onsets": [float(i / VIDEO_FPS) for i in onsets],
    }
    return f"syn{seed}-{index:07d}", encode_video(video), encode_audio(waveform), meta


def generate(
    out: str | Path,
    clips: int,
    classes: int,
    seed: int,
    duration: int = 10,
    clips_per_shard: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Writes the set's shards and manifest into `out` (absent or empty); returns the manifest's path."""
    duration = checked_duration(duration)
    check_arguments(clips, classes, seed)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; give a new directory")
    writer = ShardWriter(out, clips_per_shard)
    make = partial(make_clip, classes=classes, seed=seed, duration=duration)
    for key, video, audio, meta in map_in_order(make, range(clips), workers, "synthetic", progress):
        writer.add(key, video, "webm", audio, meta)
    encoding = {
        **ENCODING,
        "synthetic": {
            "seed": seed,
            "classes": classes,
            "clips": clips,
            "duration": duration,
            "frame_size": [SHORT_SIDE, FRAME_WIDTH],
        },
    }
    label_names = [f"class-{k:02d}" for k in range(classes)]
    return write_manifest(out, writer.close(), label_names, encoding, skipped=[])


def check_arguments(clips: int, classes: int, seed: int) -> None:
    if clips < 1 or classes < 1:
        raise ValueError(f"clips ({clips}) and classes ({classes}) must be at least 1")
    if seed < 0:
        raise ValueError(f"seed ({seed}) must be non-negative")


def checked_duration(duration: float) -> int:
    """The duration as whole seconds (10.0 -> 10); anything else is an error."""
    if not 1 <= duration <= MAX_DURATION or int(duration) != duration:
        raise ValueError(f"duration ({duration}) must be a whole number of seconds in [1, {MAX_DURATION}]")
    return int(duration)


def synthetic_dir(clips: int, classes: int, seed: int, duration: float, cache_dir: str | Path | None = None) -> Path:
    """Where `ensure_synthetic` keeps the set of these parameters (it may not exist yet):
    cache_dir/synthetic-<clips>-<classes>-<seed>-<duration>, cache_dir None: default_cache_dir()."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / f"synthetic-{clips}-{classes}-{seed}-{checked_duration(duration)}"


def ensure_synthetic(
    cache_dir: str | Path | None = None,
    clips: int = 64,
    classes: int = 8,
    seed: int = 0,
    duration: int = 10,
    *,
    workers: int | None = None,
) -> Path:
    """The directory of the synthetic set with these parameters, generated on the first call only.

    Lives in `synthetic_dir(...)`; generated into a temporary directory beside it and renamed, so a half-written set
    is never found.
    """
    duration = checked_duration(duration)
    target = synthetic_dir(clips, classes, seed, duration, cache_dir)
    cache_dir = target.parent
    if (target / MANIFEST).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        generate(staging, clips, classes, seed, duration, workers=workers or default_workers())
        os.rename(staging, target)
    except OSError:
        if not (target / MANIFEST).is_file():  # not another process that finished first: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mavil.data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) directory for the shards")
    parser.add_argument("--clips", required=True, type=int)
    parser.add_argument("--classes", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int, help="same seed, same bytes")
    parser.add_argument("--duration", type=int, default=10, help="seconds per clip (default 10)")
    parser.add_argument("--clips-per-shard", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="processes; 1 generates in this process")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        manifest = generate(
            args.out, args.clips, args.classes, args.seed, args.duration, args.clips_per_shard, args.workers
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    seconds = time.perf_counter() - started
    print(f"generated {args.clips} clips in {seconds:.1f} s ({seconds / args.clips:.3f} s per clip): {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
