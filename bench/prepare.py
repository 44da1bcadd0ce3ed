"""prepare's speed on what AudioSet downloads look like: 10-s 1280x720 H.264 at 30 fps with 44.1 kHz stereo AAC.

    python -m bench.prepare [--clips 8] [--workers 1,2] [--keep DIR]

Makes `--clips` such videos (moving, textured frames and a noisy tone, so neither codec has it easy), then times
`mavil.data.prepare` over them once per worker count, from nothing to the manifest (decode, resample to 2 fps and
short side 256, VP9 and FLAC encode, the decode-back of each written clip for the health record). Reports clips/s
and clips/s per worker; writes bench/results/prepare-<device>.json. What it takes for AudioSet-2M follows: at
r clips/s per core, 2M clips cost 2e6 / r / 3600 core-hours.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mavil.data.prepare import prepare

from .common import write_result

SECONDS, FPS, WIDTH, HEIGHT, RATE = 10, 30, 1280, 720, 44100


def write_video(path: Path, seed: int) -> None:
    """A 10-s 720p H.264 + AAC file: a drifting colour gradient under moving noise, a tone with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=RATE, layout="stereo")
        for index in range(SECONDS * FPS):
            shift = index * 7 + seed * 50
            frame = np.stack([(x + shift) % 256, (y + 2 * shift) % 256, (x + y + shift) % 256], axis=-1)
            frame = (frame + rng.integers(0, 40, frame.shape)).clip(0, 255).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        container.mux(video.encode())
        t = np.arange(SECONDS * RATE) / RATE
        wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.shape)
        samples = np.stack([wave, wave]).astype(np.float32)
        chunk = 1024
        for start in range(0, samples.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + chunk]), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            for packet in audio.encode(frame):
                container.mux(packet)
        container.mux(audio.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--workers", type=lambda text: [int(v) for v in text.split(",") if v], default=[1, 2])
    parser.add_argument("--keep", type=Path, help="keep the generated videos and shards here")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    sources = work / "videos"
    sources.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index in range(args.clips):
        path = sources / f"clip{index:03d}.mp4"
        if not path.exists():
            write_video(path, index)
    print(
        f"{args.clips} videos of {SECONDS} s, {WIDTH}x{HEIGHT} H.264 at {FPS} fps + AAC: "
        f"made in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    runs = []
    for workers in args.workers:
        out = work / f"shards-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        summary = prepare(sources, out, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        rate, per_worker = args.clips / seconds, args.clips / seconds / workers
        runs.append(
            {
                "workers": workers,
                "seconds": seconds,
                "clips_per_s": rate,
                "clips_per_s_per_worker": per_worker,
                "core_hours_for_2M_clips": 2e6 / per_worker / 3600,
                "prepared": summary.clips,
                "skipped": len(summary.skipped),
            }
        )
        print(
            f"workers {workers}: {rate:.2f} clips/s ({rate / workers:.2f} per worker; AudioSet-2M: "
            f"{runs[-1]['core_hours_for_2M_clips']:.0f} core-hours)",
            flush=True,
        )
    path = write_result(
        "prepare",
        torch.device("cpu"),
        {
            "videos": {
                "clips": args.clips,
                "seconds": SECONDS,
                "size": [WIDTH, HEIGHT],
                "fps": FPS,
                "video": "h264",
                "audio": f"aac {RATE} Hz stereo",
            },
            "runs": runs,
        },
    )
    print(f"results: {path}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
