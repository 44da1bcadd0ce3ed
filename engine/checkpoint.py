"""Checkpoints that a crash never leaves half-visible, and the consolidated export.

Layout under the run directory:
    checkpoints/<tag>/...            DeepSpeed's own sharded state (model, optimizer), our client state
    checkpoints/<tag>/rng-rank<r>.pt each rank's RNG states (masking draws differ per rank)
    checkpoints/latest               the newest complete tag, replaced atomically after every rank finished
    model.safetensors                the consolidated fp32 model, its config in the metadata (export)

A checkpoint becomes the one resumed from only when `latest` names it, and `latest` is renamed into
place after a barrier that every rank reaches once its files are written, so a crash mid-write
leaves the previous checkpoint in charge.

After a crash (kill -9 of any rank at any moment) the directory may hold a partial tag newer than
`latest`. Nothing reads it: a relaunch resumes from `latest`, and when it reaches that step again the
directory is emptied before it is written anew, so no file of the crashed write survives beside the new
ones. Tags are `step<global step, 8 digits>`, so their names sort as their steps; `prune` keeps `latest`
and the newest older tag before it, whatever the files' times, and leaves tags newer than `latest` alone
(partial writes, overwritten when reached, or a run the user rolled back by editing `latest`).
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import inject

LATEST = "latest"
KEEP = 2  # `latest` and the one before it
TAG = re.compile(r"step\d{8}")


def seed_rng(seed: int) -> None:
    """Seeds every generator whose state a checkpoint holds (torch with CUDA, Python's, NumPy's)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine, run_dir: Path, client_state: dict) -> None:
    """Every rank calls this at the same optimizer step; the tag is the engine's global step."""
    root, step, rank = run_dir / "checkpoints", engine.global_steps, dist.get_rank()
    tag = tag_for(step)
    if rank == 0 and (root / tag).exists():  # a partial write of a crashed run: none of its files may stay
        shutil.rmtree(root / tag)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    inject.kill_point("checkpoint_files", step, rank)
    torch.save(rng_state(), root / tag / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        inject.kill_point("checkpoint_written", step, rank)
        write_atomically(root / LATEST, tag)
        inject.kill_point("latest", step, rank)
        prune(root, tag, keep=KEEP)
    dist.barrier()


def prune(root: Path, latest: str, keep: int) -> None:
    """Deletes the tags older than the `keep` newest up to and including `latest` (by step, not file time)."""
    older = sorted(p.name for p in root.iterdir() if p.is_dir() and TAG.fullmatch(p.name) and p.name < latest)
    for name in older[:max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(root / name, ignore_errors=True)


def latest_tag(run_dir: Path) -> str | None:
    path = run_dir / "checkpoints" / LATEST
    return path.read_text().strip() if path.is_file() else None


def load_latest(engine, run_dir: Path) -> dict | None:
    """Restores the newest complete checkpoint into `engine` and this rank's RNG; -> its client state, or None."""
    tag = latest_tag(run_dir)
    if tag is None:
        return None
    root = run_dir / "checkpoints"
    path, client_state = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"{root / tag}: DeepSpeed could not load the checkpoint that {root / LATEST} names")
    set_rng_state(torch.load(root / tag / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    return client_state
