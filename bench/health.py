"""The health check of a shard set two ways, side by side: from the record prepare/synthetic wrote beside each shard
(member sizes and sha256 checked, nothing decoded) and by decoding every clip in full (the same set with its records
left out, as foreign shards are checked). Writes bench/results/health-<device>.json.

    python -m bench.health [--clips 2000] [--durations 1,10] [--repeats 3] [--workers N] [--keep DIR]

The clips are the synthetic set's (`mavil.data.synthetic`): 256x320 VP9 at 2 fps and 16 kHz mono FLAC, of each of
`--durations` seconds (1 s: tiny clips, the decoding side at its cheapest; 10 s: AudioSet's length). Each check is
timed `--repeats` times from no report (the median kept), the files in the page cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mavil.data.health import ensure_health
from mavil.data.pool import default_workers
from mavil.data.shards import MANIFEST
from mavil.data.synthetic import generate

from .common import write_result


def without_records(root: Path, target: Path) -> Path:
    """The set as a foreign tool would have written it: the same tars and indexes, no sidecar named."""
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("health*", "*.verified.json"))
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["shards"] = [{k: v for k, v in shard.items() if k != "verified"} for shard in manifest["shards"]]
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def timed_check(root: Path, workers: int | None, repeats: int) -> tuple[float, int, int]:
    """(median seconds, usable clips, clips decoded) of a first check (no report yet), over `repeats` checks."""
    times = []
    for _ in range(repeats):
        for report in root.glob("health*"):
            shutil.rmtree(report) if report.is_dir() else report.unlink()
        start = time.perf_counter()
        health = ensure_health(root, workers=workers, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), health.usable, sum(shard.decoded for shard in health.shards)


def measure(folder: Path, clips: int, duration: int, workers: int | None, repeats: int) -> dict:
    root = folder / f"recorded-{clips}x{duration}s"
    if not (root / MANIFEST).is_file():
        start = time.perf_counter()
        generate(root, clips, classes=8, seed=0, duration=duration, clips_per_shard=64, workers=default_workers())
        print(f"generated {clips} clips of {duration} s in {time.perf_counter() - start:.1f} s")
    foreign = folder / f"foreign-{clips}x{duration}s"
    if not foreign.exists():
        without_records(root, foreign)
    recorded_s, usable, decoded_recorded = timed_check(root, workers, repeats)
    decoding_s, usable_foreign, decoded_foreign = timed_check(foreign, workers, repeats)
    assert usable == usable_foreign == clips and decoded_recorded == 0 and decoded_foreign == clips
    return {
        "clips": clips,
        "clip": f"synthetic, {duration} s: 256x320 VP9 at 2 fps ({2 * duration} frames) + 16 kHz mono FLAC",
        "shard_bytes": sum(path.stat().st_size for path in root.glob("*.tar")),
        "from_record_s": round(recorded_s, 3),
        "decoding_s": round(decoding_s, 3),
        "speedup": round(decoding_s / recorded_s, 1),
        "clips_per_s": {"from_record": round(clips / recorded_s), "decoding": round(clips / decoding_s)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--durations", default="1,10", help="seconds per synthetic clip, one set each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: health's own choice)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated sets here (default: a temp dir)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-health-")) if args.keep is None else args.keep
    runs = [measure(folder, args.clips, int(d), args.workers, args.repeats) for d in args.durations.split(",")]
    payload = {
        "cpus": default_workers(),
        "workers": args.workers or "health's default",
        "repeats": args.repeats,
        "runs": runs,
    }
    path = write_result("health", torch.device("cpu"), payload)
    print(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
