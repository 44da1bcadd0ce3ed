"""What every entry point does before training: the process group and this rank's device.

Under the `deepspeed` launcher the environment names the rank and world; run as a plain script, a
single process group of one is made on the loopback, so `python engine/pretrain.py ...` works too.

The device is the run's choice (train.device), never a fallback: "cuda" is one GPU per rank and is refused
before any work where torch sees none (`why_no_cuda` says why, the run plan in `run.py` refuses); "cpu" trains on
the CPU even where a GPU exists, with DeepSpeed's CPU accelerator.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..deps import require

T = TypeVar("T")


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """-> (rank, world size, this rank's device) for `device` (train.device): "cuda", the GPU LOCAL_RANK with
    NCCL; "cpu", gloo. Raises RuntimeError for "cuda" where torch sees no GPU (the run plan refuses it earlier)."""
    if device == "cuda" and (reason := why_no_cuda()) is not None:
        raise RuntimeError(f'train.device = "cuda": {reason}')
    deepspeed = require("deepspeed")
    use_accelerator(device)
    if "RANK" not in os.environ:  # a plain `python` run: one process
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        rank_device = torch.device("cuda", local_rank)
    else:
        rank_device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size(), rank_device


def use_accelerator(device: str) -> None:
    """DeepSpeed's accelerator for `device`. DeepSpeed picks CUDA by itself where torch sees a GPU (at its first
    import, unless DS_ACCELERATOR says otherwise), so a CPU run there gets the CPU accelerator set here."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() == device:
        return
    if device == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
    else:
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
    set_accelerator(Accelerator())


def why_no_cuda() -> str | None:
    """None where torch sees a CUDA device; else why not, in one line: no device visible, or an NVIDIA driver too
    old for this torch build (torch says so when CUDA initialises), or a torch built without CUDA; with torch's
    version, the CUDA it was built for and torch's own words."""
    with warnings.catch_warnings(record=True) as caught:  # "CUDA initialization: ..." on the first query only
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    said = [str(warning.message) for warning in caught]
    try:  # raises torch's reason every time, where the warning above comes once per process
        torch.cuda.init()
    except Exception as err:  # RuntimeError, or AssertionError from a build without CUDA
        said.append(str(err))
    words = "; ".join(dict.fromkeys(_first_sentence(text.removeprefix("CUDA initialization: ")) for text in said))
    build = f"torch {torch.__version__} (built for CUDA {torch.version.cuda})"
    if "too old" in words:
        return (
            f"the NVIDIA driver is too old for {build}: {words}; update the driver or install a torch built for "
            f"the CUDA version it supports"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"no CUDA device visible to {build}: {words or 'torch.cuda.is_available() is false'}{hidden}"


def _first_sentence(text: str) -> str:
    """Torch's CUDA messages go on with a download URL after their first sentence."""
    return text.split(". ")[0].strip().rstrip(".")


def launched_world_size() -> int:
    """The world size `init_distributed` will have, known before it starts: the launcher's WORLD_SIZE (deepspeed,
    torchrun), 1 for a plain `python` run."""
    return int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
