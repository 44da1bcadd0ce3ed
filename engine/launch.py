"""What every entry point does before training: the process group, this rank's device, the data.

Under the `deepspeed` launcher the environment names the rank and world; run as a plain script, a
single process group of one is made on the loopback, so `python engine/pretrain.py ...` works too.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import DataConfig


def init_distributed() -> tuple[int, int, torch.device]:
    """-> (rank, world size, this rank's device); NCCL on CUDA, gloo on the CPU."""
    import deepspeed

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dataset_root(data: DataConfig, rank: int) -> Path:
    """data.root, or the embedded synthetic set, generated once into the cache by rank 0 while the others wait."""
    if data.root is not None:
        return Path(data.root)
    from ..data.synthetic import ensure_synthetic

    args = dict(clips=data.synthetic_clips, classes=data.synthetic_classes, seed=data.synthetic_seed,
                duration=data.synthetic_duration)
    if rank == 0:
        root = ensure_synthetic(**args)
    dist.barrier()
    return root if rank == 0 else ensure_synthetic(**args)  # the others find it made
