"""What every entry point does before training: the process group, this rank's device, the data.

Under the `deepspeed` launcher the environment names the rank and world; run as a plain script, a
single process group of one is made on the loopback, so `python engine/pretrain.py ...` works too.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import torch
import torch.distributed as dist

from ..config import DataConfig
from ..deps import require

if TYPE_CHECKING:  # imported where used: PyAV and the rest load only when a run reaches its data
    from ..data.health import DataHealth

T = TypeVar("T")


def init_distributed() -> tuple[int, int, torch.device]:
    """-> (rank, world size, this rank's device); NCCL on CUDA, gloo on the CPU."""
    deepspeed = require("deepspeed")
    if "RANK" not in os.environ:  # a plain `python` run: one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size(), device


def launched_world_size() -> int:
    """The world size `init_distributed` will have, known before it starts: the launcher's WORLD_SIZE (deepspeed,
    torchrun), 1 for a plain `python` run."""
    return int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthetic_set(data: DataConfig, seed: int | None = None, clips: int | None = None) -> Path:
    """The embedded synthetic set of the config's synthetic_* settings (seed and clips overridable), generated
    once into the cache. Under a process group rank 0 generates while the others wait."""
    from ..data.synthetic import ensure_synthetic

    args = dict(clips=clips or data.synthetic_clips, classes=data.synthetic_classes,
                seed=data.synthetic_seed if seed is None else seed, duration=data.synthetic_duration)
    return rank_zero_first(lambda: ensure_synthetic(**args))


def rank_zero_first(make: Callable[[], T]) -> T:
    """make() on rank 0 while the other ranks wait at a barrier, then on them (finding the work done); without a
    process group, just make()."""
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        result = make()
    if distributed:
        dist.barrier()
        if dist.get_rank():
            result = make()
    return result


def dataset_root(data: DataConfig) -> Path:
    """data.root, or the embedded synthetic set."""
    return Path(data.root) if data.root is not None else synthetic_set(data)


def checked_health(root: Path, data: DataConfig) -> DataHealth:
    """The health of the shards at `root` (mavil.data.health): rank 0 checks what the cached report does not cover,
    with a progress bar, while the others wait, then they read the report. Every rank refuses a set with more
    unusable clips than data.max_bad_fraction (UnusableData, a ConfigError naming the counts and the key)."""
    from ..data.health import ensure_health

    first = not dist.is_initialized() or dist.get_rank() == 0
    health = rank_zero_first(lambda: ensure_health(root, progress=first))
    health.check_ceiling(data.max_bad_fraction)
    return health
