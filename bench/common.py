"""Timing, device facts and result files shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

# MAVIL_BENCH_RESULTS: another folder (the GPU check's dry run writes there, leaving the committed results alone)
RESULTS = Path(os.environ.get("MAVIL_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup`, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_bytes(fn, device: torch.device) -> int | None:
    """Peak memory fn() allocates beyond what is live before it (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Measured device copy bandwidth in GB/s (bytes read + written per second), the reference for memory-bound ops."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() / seconds / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_suffix(device: torch.device) -> str:
    """What result files of `device` are named with: 'cpu', or the GPU's model ('nvidia-h200')."""
    return slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, device: torch.device, payload: dict) -> Path:
    """bench/results/<name>-<cpu|gpu model>.json with the device, versions, commit and time beside `payload`."""
    import triton

    record = {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **payload,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{device_suffix(device)}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
