"""Clips per second of the DALI pipeline against the reference loader on the same shards, in one run.

    python -m bench.data [--root DIR] [--config configs/stage1.json] [--batch-size 16] [--batches 8] [--workers 2]

Both loaders produce the paper's training batch (8 x 224 x 224 video, 1024 x 128 fbank, augmentation on)
from the same shards: by default the embedded synthetic set (generated once into the cache). The
DALI pipeline decodes on the GPU where there is one (target there: >= 800 clips/s per H100, to outrun
the trainer); here it runs its CPU pipeline. Results: bench/results/data-<cpu|cuda>.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from mavil.cli import refuse
from mavil.config import ConfigError, load_config
from mavil.data.pipeline import Loader
from mavil.data.reference import reference_loader
from mavil.data.synthetic import ensure_synthetic
from mavil.engine.run import loader_spec

from .common import synchronize, write_result


def clips_per_second(batches, count: int, device: torch.device) -> dict:
    """Times `count` batches after one warm-up batch (start-up, decoder creation)."""
    iterator = iter(batches)
    next(iterator)
    clips, start = 0, time.perf_counter()
    for _ in range(count):
        batch = next(iterator, None)
        if batch is None:
            break
        clips += len(batch["key"])
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="a shard directory (default: the synthetic set)")
    parser.add_argument("--config", default="configs/stage1.json")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads and reference DataLoader workers")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        return refuse(err)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clips_needed = args.batch_size * (args.batches + 1)
    root = args.root or ensure_synthetic(clips=max(clips_needed, 64), classes=8, seed=0, duration=10.0)
    spec = loader_spec(cfg, args.batch_size, True, num_threads=args.workers)
    results = {
        "dali": clips_per_second(Loader(root, spec, device=device), args.batches, device),
        "reference": clips_per_second(reference_loader(root, spec, num_workers=args.workers), args.batches, device),
    }
    results["speedup"] = results["dali"]["clips_per_s"] / results["reference"]["clips_per_s"]
    for name in ("dali", "reference"):
        print(f"{name:<10}{results[name]['clips_per_s']:8.1f} clips/s ({results[name]['clips']} clips)")
    print(f"DALI / reference: x{results['speedup']:.2f} on {device.type}")
    path = write_result(
        "data",
        device,
        {
            "root": str(root),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "audio_frames": spec.audio_frames,
            "video": [spec.video_frames, spec.video_size],
            **results,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
