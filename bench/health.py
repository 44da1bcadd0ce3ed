"""The health check of a shard set two ways, side by side: from the record prepare/synthetic wrote beside each shard
(member sizes and sha256 checked, nothing decoded) and by decoding every clip in full (the same set with its records
left out, as foreign shards are checked). Writes bench/results/health-<device>.json.

    python -m bench.health [--clips 2000] [--duration 1] [--workers N] [--set DIR]

The clips are the synthetic set's (`mavil.data.synthetic`): 256x320 VP9 at 2 fps and 16 kHz mono FLAC, `--duration`
seconds each (default 1 s: tiny clips, so the decoding side is the cheapest it can be; AudioSet's 10-s clips decode
about ten times longer, while the record side grows only with the bytes hashed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mavil.data.health import ensure_health
from mavil.data.prepare import default_workers
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


def timed_check(root: Path, workers: int | None) -> tuple[float, int, int]:
    """(seconds, usable clips, clips decoded) of a first check (no report yet)."""
    for report in root.glob("health*"):
        shutil.rmtree(report) if report.is_dir() else report.unlink()
    start = time.perf_counter()
    health = ensure_health(root, workers=workers, progress=False)
    return time.perf_counter() - start, health.usable, sum(shard.decoded for shard in health.shards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=1, help="seconds per synthetic clip")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: health's own choice)")
    parser.add_argument("--set", type=Path, default=None, help="keep the generated set here (default: a temp dir)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-health-")) if args.set is None else args.set
    root = folder / "recorded"
    if not (root / MANIFEST).is_file():
        start = time.perf_counter()
        generate(root, args.clips, classes=8, seed=0, duration=args.duration, clips_per_shard=64,
                 workers=default_workers())
        print(f"generated {args.clips} clips in {time.perf_counter() - start:.1f} s")
    foreign = without_records(root, folder / "foreign") if not (folder / "foreign").exists() else folder / "foreign"
    recorded_s, usable, decoded_recorded = timed_check(root, args.workers)
    decoding_s, usable_foreign, decoded_foreign = timed_check(foreign, args.workers)
    assert usable == usable_foreign == args.clips and decoded_recorded == 0 and decoded_foreign == args.clips
    tar_bytes = sum(path.stat().st_size for path in root.glob("*.tar"))
    payload = {"clips": args.clips, "clip": f"synthetic, {args.duration} s: 256x320 VP9 at 2 fps "
                                         f"({2 * args.duration} frames) + 16 kHz mono FLAC",
               "shard_bytes": tar_bytes, "cpus": default_workers(), "workers": args.workers or "health's default",
               "from_record_s": round(recorded_s, 3), "decoding_s": round(decoding_s, 3),
               "speedup": round(decoding_s / recorded_s, 1),
               "clips_per_s": {"from_record": round(args.clips / recorded_s), "decoding": round(args.clips / decoding_s)}}
    path = write_result("health", torch.device("cpu"), payload)
    print(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    if args.set is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
